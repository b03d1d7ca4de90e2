"""trauma-node: the DICOM service (SCP, spool, index, queue, delivery, HTTP, CLI)."""

__version__ = "0.1.0"
