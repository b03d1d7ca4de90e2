"""trauma-node: the DICOM service, in rooms with one job each.

node.dicom   the DICOM side: SCP, acceptor, connections, policy, TLS, SCU
node.store   the database (tables, migrations), spool, receiving, completion,
             selection, jobs, outbox, retention
node.work    the worker: running a job, writing its results, delivery
node.http    the HTTP API (one router per area), auth, answer stream, the page
node.audit   the audit trail and its messages
node.commands  the offline commands (analyze, calibrate-triage, db upgrade)
On top: cli (the `trauma-node` command), service (`serve`), config and settings_loader,
logs, metrics, stopping. Imports run one way: dicom and http use store; work uses
store, dicom's SCU and the pipeline; nothing imports the CLI.
"""

__version__ = "0.1.0"
