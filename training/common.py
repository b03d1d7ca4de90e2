"""What both training commands share: the held-out split and the record of what was trained on."""

from __future__ import annotations

import dataclasses
import datetime
import random
from pathlib import Path
from typing import Any, Sequence

from pipeline.findings import RESEARCH_USE

TRAINED_FOR = ("Trained for research use only: not a medical device, not validated for "
               "diagnosis or treatment decisions.")


def hold_out(groups: Sequence[str], fraction: float, minimum: int, seed: int) -> tuple[set[str], set[str]]:
    """Split group ids (patients, or series) into (train, held out): a seeded random share,
    at least ``minimum`` held out when there are two groups or more, never all of them."""
    unique = sorted(set(groups))
    if len(unique) < 2 or fraction <= 0:
        return set(unique), set()
    count = min(len(unique) - 1, max(minimum, round(fraction * len(unique))))
    held = set(random.Random(seed).sample(unique, count))
    return set(unique) - held, held


def provenance(dataset: Any, series: dict[str, list[dict[str, str]]], settings: Any,
               skipped: Sequence[str], **extra: Any) -> dict[str, Any]:
    """The research-use statement, the data (dataset path and layout, each split's patient and
    series ids, what was skipped and why), the settings, the software."""
    from node import __version__

    return {
        "research_use": RESEARCH_USE,
        "statement": TRAINED_FOR,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "trauma_node_version": __version__,
        "dataset": {"path": str(Path(dataset.root).resolve()), "layout": dataset.layout,
                    **{split: items for split, items in series.items()},
                    "problems": list(dataset.problems), "skipped": list(skipped)},
        "settings": dataclasses.asdict(settings),
        **extra,
    }
