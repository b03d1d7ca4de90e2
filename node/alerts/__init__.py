"""Critical-result alerts: when a finished study is high risk or shows active
extravasation ([[alerts]] triggers), each configured receiver is told within seconds.

- triggers: what a job's result must show for an alert
- store: the alert outbox (tables alert_checks and alerts), the watcher's and the
  sender's reads and writes
- content: what every alert carries, built from the job's result when it is sent
- webhook, fhir, hl7v2: one payload builder and sender per kind of receiver
- delivery: the watcher (finished jobs -> alert rows) and the sender (rows -> receivers)

"Once": each alert has a stable id (a UUID made when it is queued, kept with its row).
An alert is sent until one attempt is acknowledged and never after; an
attempt cut off before its answer (a crash, a timeout) is sent again with the same id,
so a receiver can tell the repeat: the webhook's X-Trauma-Node-Alert-Id header and
alert_id field, FHIR conditional creates on that identifier (the server itself keeps
one copy), HL7's MSH-10 message control id.
"""
