"""The `trauma-node` command."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from node import __version__

from node.commands import db_upgrade as db_command
from node.commands import users as users_command
from node.config import ConfigError, Settings, load_settings
from node.logs import setup_logging
from node.store.schema import SchemaError

_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "node.data_dir": getattr(args, "data_dir", None),
        "node.dicom_port": getattr(args, "dicom_port", None),
        "node.http_port": getattr(args, "http_port", None),
        "node.ae_title": getattr(args, "ae_title", None),
    }
    return load_settings(args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(settings.node.log_level)
    from pipeline.models import ModelUnavailable

    from node.service import Node

    try:
        Node(settings).serve_forever()
    except ModelUnavailable as exc:
        print(f"trauma-node: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(settings.node.log_level)
    from pipeline.models import ModelUnavailable

    from node.work.worker import run_workers

    count = args.count if args.count is not None else settings.workers.count
    if count < 1:
        print("trauma-node: workers.count is 0 in the config: give --count N", file=sys.stderr)
        return 2
    try:
        run_workers(settings, count)
    except ModelUnavailable as exc:
        print(f"trauma-node: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """What the next retention pass of `serve` would remove (it removes nothing itself:
    the running node drops its in-memory state with the rows it removes)."""
    settings = _settings(args)
    from node.store.database import Index
    from node.store.retention import Retention

    index = Index(settings.database_url)
    try:
        days = settings.storage.retention_days
        if days <= 0:
            print("storage.retention_days = 0: studies are kept")
            return 0
        would = Retention(settings, index).run_once(dry_run=True)
    finally:
        index.close()
    for study_uid in would.studies:
        print(study_uid)
    if would.studies:
        print(f"retention_days = {days:g}: {len(would.studies)} studies, {would.instances} "
              f"instances, {would.bytes / 1e6:.1f} MB to remove at the next pass of `serve`")
    else:
        print(f"retention_days = {days:g}: nothing to remove")
    if would.kept_for_dead_letters:
        print(f"{would.kept_for_dead_letters} expired studies kept: their results were never "
              "delivered (`trauma-node retry`)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"configuration OK: AE {settings.node.ae_title!r}, DICOM port "
          f"{settings.node.dicom_port}, HTTP {settings.node.http_bind}:{settings.node.http_port}, "
          f"data {settings.data_dir}, {len(settings.peers)} peers, "
          f"{len(settings.destinations)} destinations, {len(settings.alerts)} alert receivers")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from node.store import status
    from node.store.database import Index

    settings = _settings(args)
    index = Index(settings.database_url)
    try:
        if args.json:
            print(json.dumps(status.studies(index), indent=2))
        else:
            print(status.table(index))
    finally:
        index.close()
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from node.store import outbox
    from node.store.database import Index
    from node.store.tables import AlertItem

    settings = _settings(args)
    index = Index(settings.database_url)
    try:
        count = outbox.retry_dead(index)
        alerts = outbox.retry_dead(index, AlertItem)  # alerts' dead letters (node.alerts)
    finally:
        index.close()
    print(f"{count} dead letters re-queued for delivery"
          + (f", and {alerts} critical-result alerts" if alerts else ""))
    return 0


def cmd_api_token(args: argparse.Namespace) -> int:
    from node.http.auth import resolve_tokens

    settings = _settings(args)
    resolved = resolve_tokens(settings)  # with none configured: the stored one, or a new one
    if resolved.source == "config":
        print(f"{len(resolved.tokens)} API token(s) configured (api.tokens or "
              "TRAUMA_NODE_API_TOKENS)")
    else:
        print(f"API token file: {resolved.path}"
              + (" (generated now)" if resolved.source == "generated" else ""))
        if args.show:
            print(resolved.tokens[0])
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from node.dicom.scu import AssociationFailed, echo

    try:
        code = echo(args.host, args.port, args.called_ae, args.calling_ae)
    except AssociationFailed as exc:
        print(f"C-ECHO failed: {exc}", file=sys.stderr)
        return 2
    print(f"C-ECHO {args.called_ae}@{args.host}:{args.port}: status 0x{code:04X}")
    return 0 if code == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from node.dicom.scu import AssociationFailed, send

    match = _DESTINATION.match(args.to)
    if not match:
        print(f"--to {args.to!r}: expected AE@HOST:PORT, e.g. TRAUMA_AI@127.0.0.1:11112",
              file=sys.stderr)
        return 2
    root = Path(args.dir)
    if not root.exists():
        print(f"{root}: no such file or directory", file=sys.stderr)
        return 2
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    try:
        report = send(paths, match["host"], int(match["port"]), match["ae"], args.calling_ae)
    except AssociationFailed as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return 2
    for path, why in report.skipped.items():
        print(f"skipped {path}: {why}", file=sys.stderr)
    for path, why in report.failed.items():
        print(f"failed {path}: {why}", file=sys.stderr)
    print(f"sent {report.sent}, failed {len(report.failed)}, skipped {len(report.skipped)}")
    return 0 if not report.failed else 1


def cmd_analyze(args: argparse.Namespace) -> int:
    from node.commands.analyze import analyze

    from pipeline import VolumeError

    settings = _settings(args)
    try:
        analyze(Path(args.dir), Path(args.out), settings.pipeline)
    except VolumeError as exc:
        print(f"analyze: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_calibrate_triage(args: argparse.Namespace) -> int:
    from node.commands.calibrate import LabelsError, run

    from pipeline import VolumeError
    from pipeline.models import ModelUnavailable

    settings = _settings(args)
    try:
        status, text = run(settings.pipeline, Path(args.labels), args.json)
    except (LabelsError, VolumeError) as exc:
        print(f"calibrate-triage: {exc}", file=sys.stderr)
        return 2
    except (ModelUnavailable, ValueError) as exc:
        print(f"calibrate-triage: {exc}", file=sys.stderr)
        return 1
    print(text, file=sys.stdout if status == 0 else sys.stderr)
    return status


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.dataset import DatasetError
    from evaluation.evaluate import Options, evaluate

    settings = _settings(args)
    dataset = Path(args.dataset)
    out = Path(args.out) if args.out else Path(f"evaluation-{dataset.resolve().name}")
    try:
        figures = evaluate(dataset, settings.pipeline, Options(
            out, args.threshold, args.bootstrap, progress=not args.quiet), args.layout)
    except DatasetError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"RSNA 2023 metric {figures['rsna2023_log_loss']['score']:.4f} over "
          f"{figures['dataset']['patients']} patients; {out / 'summary.md'}, metrics.json, "
          "roc.png, reliability.png")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trauma-node", description=(
        "DICOM node for abdominal trauma CT: receives CT series, analyses them, sends DICOM "
        "SEG and SR back to the PACS. Research use only."))
    p.add_argument("--version", action="version", version=f"trauma-node {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="TOML config file (default: $TRAUMA_NODE_CONFIG, "
                        "then config/node.toml)")
        sp.add_argument("--data-dir", help="data directory (spool, database)")
        return sp

    db_command.add_parser(sub, with_config)  # trauma-node db upgrade
    users_command.add_parser(sub, with_config)  # trauma-node users add|list|disable|enable|token
    serve = with_config(sub.add_parser("serve", help="run the DICOM SCP, workers and HTTP API"))
    serve.add_argument("--dicom-port", type=int)
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--ae-title")
    serve.set_defaults(func=cmd_serve)

    worker = with_config(sub.add_parser(
        "worker", help="run analysis workers only, against the node's database and data "
                       "directory (e.g. on a GPU host; set workers.count = 0 for serve)"))
    worker.add_argument("--count", type=int, help="how many workers (default workers.count)")
    worker.set_defaults(func=cmd_worker)

    retention = with_config(sub.add_parser(
        "retention", help="list the studies the next retention pass of serve will remove"))
    retention.set_defaults(func=cmd_retention)

    check = with_config(sub.add_parser("check-config", help="validate a config file"))
    check.set_defaults(func=cmd_check_config)

    status = with_config(sub.add_parser("status", help="studies, series and jobs"))
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)

    retry = with_config(sub.add_parser("retry", help="re-queue results whose delivery gave up"))
    retry.set_defaults(func=cmd_retry)

    token = with_config(sub.add_parser("api-token", help="where the HTTP API token is "
                                       "(generated when none is configured)"))
    token.add_argument("--show", action="store_true", help="also print the token itself")
    token.set_defaults(func=cmd_api_token)

    echo = sub.add_parser("echo", help="C-ECHO a DICOM node")
    echo.add_argument("host")
    echo.add_argument("port", type=int)
    echo.add_argument("--called-ae", default="TRAUMA_AI")
    echo.add_argument("--calling-ae", default="TRAUMA_NODE")
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", help="C-STORE the DICOM files of a folder")
    send.add_argument("dir", help="folder (searched recursively) or one file")
    send.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    send.add_argument("--calling-ae", default="TRAUMA_NODE")
    send.set_defaults(func=cmd_send)

    analyze = with_config(sub.add_parser("analyze", help="run the pipeline on a folder, no network"))
    analyze.add_argument("dir")
    analyze.add_argument("--out", required=True, help="folder for findings.json and outputs")
    analyze.set_defaults(func=cmd_analyze)

    calibrate = with_config(sub.add_parser(
        "calibrate-triage", help="fit the MedSigLIP triage calibration on labelled slices"))
    calibrate.add_argument("labels", help="CSV with the columns path, label (1 abnormal, 0 normal) "
                                          "and, for multi-frame files, frame")
    calibrate.add_argument("--json", action="store_true", help="print the figures as JSON")
    calibrate.set_defaults(func=cmd_calibrate_triage)

    evaluate = with_config(sub.add_parser(
        "evaluate", help="run the configured pipeline on a labelled dataset and measure it"))
    evaluate.add_argument("dataset", help="RSNA 2023 layout (train.csv) or a site's folder "
                                          "(labels.csv): see evaluation/dataset.py")
    evaluate.add_argument("--out", help="results folder (default evaluation-<dataset name>); "
                                        "a run resumes what it holds")
    evaluate.add_argument("--layout", choices=("auto", "rsna2023", "site"), default="auto")
    evaluate.add_argument("--threshold", type=float, default=0.5,
                          help="probability at which a target counts as found (0.5)")
    evaluate.add_argument("--bootstrap", type=int, default=1000,
                          help="resamples for the 95%% intervals (0: none)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_evaluate)

    from training.cli import add_commands as add_training_commands  # finetune-reading, train-segmentation

    add_training_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Every command logs through the node's escaping handler (node.logs), not logging's
    # bare last-resort one; serve and worker set their configured level again.
    setup_logging("WARNING")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"trauma-node: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:  # a database older or newer than this code
        print(f"trauma-node: {db_command.explain(exc, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
