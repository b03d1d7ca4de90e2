"""What the tests (and bench/) share: the node as a process (nodes), phantoms, Orthanc,
PostgreSQL, tiny models, the OHIF viewer, and helpers for metrics, Q&A, stopping and
data sets. Importable as `support` with tests/ on sys.path (tests/conftest.py puts it there)."""
