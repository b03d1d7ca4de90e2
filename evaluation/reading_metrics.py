"""How well readings keep to their JSON format and agree with the labels.

Used by `trauma-node evaluate` and by the reading fine-tuning tests. A reading is either
the raw reply text of a model, or the reading of a Findings (``findings.reading``, a dict
with ``raw_texts``/``parsed`` when a model wrote it).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pipeline.reading_json import parse_reading
from pipeline.reconcile import reading_organs


def _parsed(reading: str | Mapping[str, Any], strict: bool) -> dict[str, Any] | None:
    """The five keys when the reading's first reply is in the format, else None."""
    if isinstance(reading, Mapping):
        texts = reading.get("raw_texts") or ([reading["raw_text"]] if "raw_text" in reading else [])
        if not texts:  # a reading no model wrote (the rules, or not assessed)
            return None
        reading = texts[0]
    result = parse_reading(reading)
    if not result.parsed or (strict and result.repaired):
        return None
    return result.value


def format_adherence(readings: Sequence[str | Mapping[str, Any]], strict: bool = False) -> float:
    """The share of readings whose first reply is the reading's JSON, as the node's parser
    (pipeline.reading_json.parse_reading) accepts it; strict: without repair. 0 when none."""
    if not readings:
        return 0.0
    return sum(_parsed(r, strict) is not None for r in readings) / len(readings)


def organ_accuracy(readings: Sequence[str | Mapping[str, Any]],
                   expected: Sequence[Sequence[str]]) -> float:
    """The share of readings whose organs_involved name exactly the expected organs (compared
    as the Findings' organ keys: an unsided kidney is both); a reading out of format counts
    as wrong. expected: each reading's organ names (e.g. liver, spleen, kidney, bowel)."""
    if not readings:
        return 0.0
    right = 0
    for reading, organs in zip(readings, expected, strict=True):
        value = _parsed(reading, False)
        if value is not None and (set(reading_organs(value["organs_involved"]))
                                  == set(reading_organs(list(organs)))):
            right += 1
    return right / len(readings)


def severity_match(readings: Sequence[str | Mapping[str, Any]], expected: Sequence[str]) -> float:
    """The share of readings whose severity_estimate is the expected one (none, mild,
    moderate, severe); a reading out of format counts as wrong."""
    if not readings:
        return 0.0
    right = 0
    for reading, severity in zip(readings, expected, strict=True):
        value = _parsed(reading, False)
        right += value is not None and value["severity_estimate"] == severity
    return right / len(readings)
