"""The offline commands of `trauma-node` (node.cli): analyze a folder, calibrate the
triage, upgrade the database."""
