"""The DICOM side: the SCP and its fast acceptor, connections, association policy, TLS
and the SCU. Stores what it receives through node.store."""
