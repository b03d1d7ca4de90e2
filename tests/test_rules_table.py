"""The rule table: AAST grade estimates, risk tiers, EAST-aligned recommendations, settings checks."""

from __future__ import annotations

import pytest

from pipeline import rules
from pipeline.compartments import INTRA, OWNER
from pipeline.findings import Compartment
from pipeline.grading import organ_evidence, recommend, risk_tier
from pipeline.quantification import Quantification
from pipeline.settings import PipelineSettings, RiskTierSettings


def compartment(ml: float, name: str, adjacent: list[str], blush: float = 0.0,
                extent: float = 30.0) -> Compartment:
    parenchymal = name in INTRA.values()
    return Compartment(name=name, volume_ml=ml, active_extravasation_ml=blush, parenchymal=parenchymal,
                       organ=OWNER.get(name), organs_adjacent=adjacent, largest_extent_mm=extent)


def quantification(*found: Compartment) -> Quantification:
    blood = sum(c.volume_ml for c in found)
    blush = sum(c.active_extravasation_ml for c in found)
    return Quantification({"hemorrhage": blood, "non_enhancing_hemorrhage": blood - blush,
                           "active_extravasation": blush}, {}, 1.0,
                          {c.name: c.volume_ml for c in found}, [], list(found))


def evidence(organ: str, **changes) -> rules.OrganEvidence:
    base = dict(organ=organ, located=True, adjacent_blood_ml=0.0, intraparenchymal_blood_ml=0.0,
                largest_intraparenchymal_mm=0.0, blush_inside=False, blush_outside_adjacent=False)
    return rules.OrganEvidence(**{**base, **changes})


@pytest.mark.parametrize("organ, changes, grade, rule", [
    ("spleen", dict(blush_outside_adjacent=True, intraparenchymal_blood_ml=4.0, bleeding_confirmed=True), 5,
     "AAST-SPLEEN-V-BLEED-BEYOND"),
    ("spleen", dict(blush_outside_adjacent=True, intraparenchymal_blood_ml=4.0), 4,
     "AAST-SPLEEN-IV-BLUSH-BEYOND-ONE-PHASE"),
    ("spleen", dict(blush_inside=True), 4, "AAST-SPLEEN-IV-BLEED-CONTAINED"),
    ("spleen", dict(largest_intraparenchymal_mm=50.0), 3, "AAST-SPLEEN-III-HEMATOMA-5CM"),
    ("spleen", dict(largest_intraparenchymal_mm=20.0), 2, "AAST-SPLEEN-II-HEMATOMA"),
    ("liver", dict(blush_outside_adjacent=True, intraparenchymal_blood_ml=4.0, bleeding_confirmed=True), 4,
     "AAST-LIVER-IV-BLEED-BEYOND"),
    ("liver", dict(blush_outside_adjacent=True, intraparenchymal_blood_ml=4.0), 3,
     "AAST-LIVER-III-BLUSH-BEYOND-ONE-PHASE"),
    ("liver", dict(blush_inside=True), 3, "AAST-LIVER-III-BLEED-CONTAINED"),
    ("liver", dict(largest_intraparenchymal_mm=120.0), 3, "AAST-LIVER-III-HEMATOMA-10CM"),
    ("liver", dict(largest_intraparenchymal_mm=60.0), 2, "AAST-LIVER-II-HEMATOMA"),
    ("spleen", dict(vascular_injury=True), 4, "AAST-SPLEEN-IV-VASCULAR-INJURY"),
    ("liver", dict(vascular_injury=True), 3, "AAST-LIVER-III-VASCULAR-INJURY"),
])
def test_each_grade_rule(organ, changes, grade, rule):
    got, fired = rules.grade(evidence(organ, **changes))
    assert got == grade
    assert rule in [r.id for r in fired]


def test_no_grade_without_evidence_and_every_rule_has_a_source():
    assert rules.grade(evidence("spleen", adjacent_blood_ml=80.0)) == (None, [])
    # A blush in the blood beside the spleen does not show the spleen is its source.
    assert rules.grade(evidence("spleen", adjacent_blood_ml=80.0, blush_outside_adjacent=True)) == (None, [])
    assert rules.grade(evidence("kidney_left", blush_inside=True)) == (None, [])
    for rule in (*rules.GRADE_RULES, *rules.DECISION_RULES):
        assert rule.source and rule.statement


def test_highest_grade_wins():
    got, fired = rules.grade(evidence("spleen", blush_inside=True, intraparenchymal_blood_ml=3.0,
                                      largest_intraparenchymal_mm=60.0))
    assert got == 4 and len(fired) == 2


def test_organ_evidence_counts_each_compartment_for_its_own_organ_only():
    q = quantification(compartment(60.0, "perisplenic", ["spleen", "kidney_left"], blush=0.6))
    spleen, kidney = organ_evidence("spleen", True, q), organ_evidence("kidney_left", True, q)
    assert spleen.blush_outside_adjacent and spleen.adjacent_blood_ml == 60.0
    assert not spleen.parenchymal  # blood and a blush beside it: no injury of the spleen shown
    assert not kidney.blush_outside_adjacent and kidney.adjacent_blood_ml == 0.0
    inside = quantification(compartment(5.0, "intrasplenic", ["spleen"], extent=40.0),
                            compartment(20.0, "perisplenic", ["spleen"]))
    e = organ_evidence("spleen", True, inside)
    assert e.intraparenchymal_blood_ml == 5.0 and e.largest_intraparenchymal_mm == 40.0
    assert e.adjacent_blood_ml == 20.0 and e.parenchymal


TIERS = RiskTierSettings()  # 200 / 500 mL, 2 / 3 spaces, blush is high


@pytest.mark.parametrize("components, tier", [
    ((), "none"),
    ((compartment(30.0, "perihepatic", ["liver"]),), "low"),
    ((compartment(250.0, "perihepatic", ["liver"]),), "moderate"),
    ((compartment(30.0, "perihepatic", ["liver"]), compartment(20.0, "pelvic", [])), "moderate"),
    ((compartment(600.0, "perihepatic", ["liver"]),), "high"),
    ((compartment(10.0, "perihepatic", ["liver"]), compartment(10.0, "pelvic", []),
      compartment(10.0, "perisplenic", ["spleen"])), "high"),
    ((compartment(5.0, "perisplenic", ["spleen"], blush=0.5),), "high"),
    # Blood inside an organ is not a space; a sliver under min_space_ml is not one either.
    ((compartment(30.0, "perihepatic", ["liver"]), compartment(40.0, "intrahepatic", ["liver"])), "low"),
    ((compartment(30.0, "perihepatic", ["liver"]), compartment(2.0, "right_paracolic", [])), "low"),
])
def test_risk_tiers(components, tier):
    got, reasons = risk_tier(quantification(*components), TIERS)
    assert got == tier and reasons


def test_risk_tier_thresholds_are_configurable():
    q = quantification(compartment(30.0, "perihepatic", ["liver"]))
    assert risk_tier(q, RiskTierSettings(moderate_ml=10.0, high_ml=20.0))[0] == "high"
    blush = quantification(compartment(5.0, "perisplenic", ["spleen"], blush=0.5))
    assert risk_tier(blush, RiskTierSettings(blush_is_high=False))[0] == "low"


def case(blood=50.0, blush=0.0, tier="low", spleen=False) -> rules.CaseEvidence:
    return rules.CaseEvidence(blood, blush, tier, spleen)


def fired(recommendation) -> set[str]:
    return {r.id for r in recommendation.rules_fired if r.branch is None}


def test_stable_blush_points_to_angiography():
    r = recommend(case(blush=0.5, tier="high", spleen=True), "stable")
    assert fired(r) == {"EAST-STABLE-NONOPERATIVE", "EAST-STABLE-BLUSH-ANGIOGRAPHY",
                        "EAST-HEMOPERITONEUM-AMOUNT"}
    assert not r.branches


def test_unstable_goes_to_operation():
    r = recommend(case(blood=300.0, tier="moderate"), "unstable")
    assert fired(r) == {"EAST-UNSTABLE-OPERATIVE"}
    assert "laparotomy" in r.summary


def test_unknown_status_says_what_each_branch_means_and_no_more():
    r = recommend(case(blush=0.5, tier="high"), "unknown")
    assert fired(r) == {"STATUS-UNKNOWN"}
    assert set(r.branches) == {"stable", "unstable"}
    assert "angiography" in r.branches["stable"] and "laparotomy" in r.branches["unstable"]
    assert {x.branch for x in r.rules_fired if x.branch} == {"stable", "unstable"}
    assert not any("laparotomy" in a or "angiography" in a for a in r.actions)


def test_no_blood_says_it_does_not_exclude_injury():
    for status in ("stable", "unstable", "unknown"):
        r = recommend(case(blood=0.0, tier="none"), status)
        assert fired(r) == {"NO-BLOOD-DETECTED"}
        assert "does not exclude" in r.summary


def test_settings_validate_cross_field_checks():
    assert PipelineSettings().validate() == []
    s = PipelineSettings()
    s.risk_tiers.high_ml = 100.0
    s.hu.blood_max = 20.0
    s.backends.segmentation = "u-net"
    problems = s.validate()
    assert "pipeline.risk_tiers.high_ml must be > moderate_ml" in problems
    assert "pipeline.hu.blood_max must be > blood_min" in problems
    assert any("pipeline.backends.segmentation" in p and "hu-baseline" in p for p in problems)


def test_a_contained_vascular_injury_follows_its_own_rules():
    r = recommend(rules.CaseEvidence(50.0, 0.0, "low", True, contained_vascular_injury_ml=0.8), "stable")
    assert "EAST-STABLE-VASCULAR-INJURY-ANGIOGRAPHY" in fired(r)
    assert "EAST-STABLE-BLUSH-ANGIOGRAPHY" not in fired(r)  # no active extravasation was seen
    q = quantification(compartment(20.0, "perisplenic", ["spleen"]))
    q.volumes_ml["contained_vascular_injury"] = 0.8
    tier, reasons = risk_tier(q, TIERS)
    assert tier == "high" and any("pseudoaneurysm" in r for r in reasons)


def test_a_blush_beyond_the_organ_grades_as_bleeding_only_once_the_phases_show_it_grew():
    from pipeline.findings import ContrastFocus

    q = quantification(compartment(5.0, "intrasplenic", ["spleen"]),
                       compartment(60.0, "perisplenic", ["spleen"], blush=0.6))
    focus = ContrastFocus(id=1, volume_ml=0.6, mean_hu=200.0, aorta_hu=180.0, centroid_mm=[0, 0, 0],
                          max_extent_mm=12.0, compartment="perisplenic")
    q.contrast_foci = [focus]
    assert rules.grade(organ_evidence("spleen", True, q))[0] == 4  # one phase: IV at least
    focus.kind = "active_bleeding"
    assert rules.grade(organ_evidence("spleen", True, q))[0] == 5
