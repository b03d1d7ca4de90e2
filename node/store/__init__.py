"""The store: the node's database (every table and its migrations), the spool of received
instances, receiving them, series completion and selection, the job queue, the outbox
and retention. Knows nothing of DICOM networking, HTTP or the workers."""
