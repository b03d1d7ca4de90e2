"""Where each study stands with its prior, one small JSON file per study in
DATA_DIR/prior/: written by the lookup loop in `serve`, read by the workers (which may
run in other processes, sharing the data directory). The index holds no patient data, so
neither do these files: UIDs and dates only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOOKING = "looking"          # the lookup has begun
IS_PRIOR = "is_prior"        # this study was retrieved as another's prior: no lookup of its own
RETRIEVED = "retrieved"      # prior_study_uid was moved here; its Findings follow its analysis
NO_PRIOR = "no_prior"        # why: none in the PACS, or nothing to query with
UNANSWERED = "unanswered"    # why: the PACS refused or did not answer
SETTLED = {IS_PRIOR, RETRIEVED, NO_PRIOR, UNANSWERED}


def _path(data_dir: Path, study_uid: str) -> Path:
    return data_dir / "prior" / f"{study_uid}.json"  # UIDs are validated on receipt


def read(data_dir: Path, study_uid: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(data_dir, study_uid).read_text())
    except (OSError, ValueError):
        return None


def write(data_dir: Path, study_uid: str, state: str, **details: Any) -> None:
    """Atomically (a reader never sees half a file)."""
    path = _path(data_dir, study_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"state": state, **details}))
    os.replace(partial, path)


def looking(data_dir: Path) -> list[str]:
    """The studies whose lookup has begun and not settled."""
    found = []
    for path in sorted((data_dir / "prior").glob("*.json")):
        now = read(data_dir, path.stem)
        if now is not None and now.get("state") == LOOKING:
            found.append(path.stem)
    return found


def forget(data_dir: Path, study_uid: str) -> None:
    _path(data_dir, study_uid).unlink(missing_ok=True)
