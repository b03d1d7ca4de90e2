"""The interval change against the prior study (pipeline.interval) as a reader meets it:
in the report text and in the answer to "how has it changed since the prior?"."""

from __future__ import annotations

import copy

import pytest

from support.qa_support import findings_dict
from pipeline.answering import GroundedAnswerer, Question
from pipeline.findings import Findings
from pipeline.interval import attach, compare, not_compared


@pytest.fixture(scope="module")
def bleed() -> Findings:
    return Findings.from_json_dict(findings_dict("bleed"))


@pytest.fixture(scope="module")
def clean() -> Findings:
    return Findings.from_json_dict(findings_dict("clean"))


def answer(findings: Findings, text: str) -> str:
    return "".join(GroundedAnswerer().answer(Question(text, findings, (), None)))


def test_a_bleed_that_grew_since_a_clean_prior(bleed, clean):
    current = copy.deepcopy(bleed)
    change = compare(current, clean, "1.2.3", "20261101")
    attach(current, change)
    now = bleed.volumes_ml["hemorrhage"]
    assert change["hemorrhage_ml"] == {"prior": 0.0, "current": round(now, 1),
                                       "change": round(now, 1)}
    regions = sorted(r for r, ml in bleed.volumes_by_region_ml.items() if ml >= 1.0)
    assert change["new"] == regions and change["resolved"] == [] and regions
    assert f"{now:.1f} mL now versus 0.0 mL then" in current.report
    assert "prior CT of 2026-11-01: hemorrhage increased" in current.report
    # Kept through findings.json, as the Q&A reads it back.
    again = Findings.from_json_dict(current.to_json_dict())
    text = answer(again, "How has the bleeding changed since the prior?")
    assert f"{now:.1f} mL now versus 0.0 mL then" in text
    assert regions[0].replace("_", " ") in text


def test_collections_that_resolved(bleed, clean):
    change = compare(clean, bleed, "1.2.3", "20261101")
    assert change["hemorrhage_ml"]["current"] == 0.0 and change["hemorrhage_ml"]["change"] < 0
    assert change["resolved"] and not change["new"] and "decreased" in change["statement"]


def test_no_prior_is_said_not_left_out(bleed):
    current = copy.deepcopy(bleed)
    attach(current, not_compared("the PACS PACS refused or did not answer: no association"))
    assert current.report.endswith("Comparison with a prior study: none made (the PACS PACS "
                                   "refused or did not answer: no association).")
    assert "none made" in answer(current, "Has it changed compared with the prior CT?")


def test_findings_from_before_the_lookup_say_there_was_no_comparison(bleed):
    text = answer(bleed, "Has it changed compared with the prior CT?")
    assert "No comparison with a prior study was made" in text
