"""The readers' verdicts as DICOM: the verdict SR of a study built from its current verdicts
(report), and stored to the archive through the outbox once the readers have finished
(archive). The verdicts themselves are kept by node.store.verdicts."""
