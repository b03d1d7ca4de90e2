"""The audit trail: events (trail), their DICOM PS3.15 A.5 messages (messages) and the
syslog sender (syslog)."""
