"""The patient's prior study: found in the PACS (C-FIND), retrieved to this node (C-MOVE),
analysed like any received series, and compared with the new study (pipeline.interval)."""
