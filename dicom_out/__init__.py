"""Findings + source series in, DICOM SEG and TID 1500 SR out (not yet built)."""
