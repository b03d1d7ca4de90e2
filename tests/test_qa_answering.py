"""The grounded default answerer: pure, from Findings of real pipeline runs on phantoms."""

from __future__ import annotations

import copy
import re

import pytest

from support.qa_support import findings_dict
from pipeline.answering import GroundedAnswerer, Question, Turn, pieces
from pipeline.registry import ANSWERERS, answerer_name, create_answerer, register
from pipeline.findings import Findings

QUESTIONS = [
    "What was found?", "How much blood is there?", "Where is the blood, on which slices?",
    "Is there active extravasation?", "Is the spleen injured?", "What AAST grade is the liver?",
    "Is the right kidney injured?", "What about the bowel?", "What is the risk tier?",
    "What should we do?", "Which rules fired and why?", "Show me the report",
    "How was this analysed, and what are the limitations?", "Is the pancreas injured?",
    "Is there a liver laceration?", "Any rib fractures?", "What's the patient's name?",
    "Tell me a joke", "Is the left kidney bleeding?", "How big is the hematoma?",
]


@pytest.fixture(scope="module")
def bleed(tmp_path_factory) -> Findings:
    return Findings.from_json_dict(findings_dict("bleed"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Findings:
    return Findings.from_json_dict(findings_dict("clean"))


def answer(findings: Findings, text: str, history=(), status=None) -> str:
    return "".join(GroundedAnswerer().answer(Question(text, findings, tuple(history), status)))


def test_the_phantom_findings_are_what_the_tests_expect(bleed, clean):
    assert bleed.volumes_ml["hemorrhage"] > 10 and bleed.volumes_ml["active_extravasation"] > 0
    assert bleed.organs["spleen"].aast_grade is not None
    assert bleed.organs["liver"].aast_grade is None and bleed.organs["liver"].adjacent_blood_ml > 0
    assert clean.volumes_ml["hemorrhage"] == 0 and not clean.components


def test_registry_default_and_unknown_backend():
    assert answerer_name(None) == "grounded" and "grounded" in ANSWERERS
    assert isinstance(create_answerer(), GroundedAnswerer)

    class Settings:  # pipeline settings once issue 5 adds backends.answering
        class backends:
            answering = "echo"

    class Echo:
        name, version, description = "echo", "0", "test"

        def __init__(self, settings):
            pass

        def answer(self, question):
            yield question.text

    register("echo", Echo)
    try:
        assert create_answerer(Settings()).name == "echo"
        with pytest.raises(ValueError, match="unknown answering backend 'nope'"):
            create_answerer(name="nope")
    finally:
        del ANSWERERS["echo"]


def test_pieces_join_back_to_the_text_exactly():
    text = "  Hémorrhagie 90.3 mL\n\n- item\t🩸 end \n"
    parts = list(pieces(text))
    assert "".join(parts) == text and len(parts) > 4


def test_answers_stream_in_pieces(bleed):
    parts = list(GroundedAnswerer().answer(Question("How much blood is there?", bleed)))
    assert len(parts) > 10
    assert "".join(parts) == GroundedAnswerer().compose(Question("How much blood is there?", bleed))


def test_volumes_come_from_the_findings(bleed):
    text = answer(bleed, "How much blood is there?")
    assert f"{bleed.volumes_ml['hemorrhage']:.1f} mL" in text
    assert f"{bleed.volumes_ml['active_extravasation']:.1f} mL" in text
    for region, ml in bleed.volumes_by_region_ml.items():
        assert f"{region.replace('_', ' ')} {ml:.1f} mL" in text
    assert "Research use only" in text


def test_organ_grade_rules_and_slices(bleed):
    spleen = bleed.organs["spleen"]
    text = answer(bleed, "Is the spleen injured, and where on which slices?")
    assert "Spleen:" in text and f"{spleen.adjacent_blood_ml:.1f} mL" in text
    assert "AAST grade at least IV" in text and spleen.aast_rules[0] in text
    component = next(c for c in bleed.components if "spleen" in c.organs_touched)
    first, last = component.slices
    assert f"images {first + 1} to {last + 1} of {bleed.series['shape'][0]}" in text


def test_liver_without_grade_says_why(bleed):
    text = answer(bleed, "What AAST grade is the liver?")
    assert "Liver:" in text and "No AAST grade is supported" in text
    assert "grade at least" not in text.split("Liver:")[1].split("\n")[0]


@pytest.mark.parametrize("question, thing", [
    ("Is the pancreas injured?", "the pancreas"),
    ("Any rib fractures?", "bones and fractures"),
    ("Is there a pneumothorax?", "the chest"),
    ("What is the patient's name?", "the patient's identity"),
])
def test_outside_the_findings_is_said_plainly(bleed, question, thing):
    text = answer(bleed, question)
    assert text.startswith("This is outside what was found") and thing in text
    assert "neither present nor absent" in text


def test_an_unrelated_question_is_outside_and_nothing_is_guessed(bleed):
    text = answer(bleed, "Tell me a joke")
    assert text.startswith("This question is outside what was found")
    assert "will not guess" in text


def test_a_study_without_blood_never_gets_a_finding_invented(clean):
    for question in QUESTIONS:
        text = answer(clean, question).lower()
        assert "active extravasation: present" not in text
        assert "grade at least" not in text
        assert not re.search(r"[1-9]\d*\.\d mL", text), (question, text)
    assert "no blood-density collection" in answer(clean, "How much blood?").lower()
    assert "no active extravasation" in answer(clean, "Any contrast blush?").lower()
    assert "nothing to locate" in answer(clean, "Where is the bleeding?").lower()


def _allowed_numbers(findings: Findings) -> set[str]:
    """Every number the Findings hold, in the forms an answer may print them."""
    allowed: set[str] = set()

    def walk(value):
        if isinstance(value, bool):
            return
        if isinstance(value, (int, float)):
            allowed.update({str(value), f"{value:.1f}", f"{value:.0f}", f"{value:g}"})
            if isinstance(value, int):
                allowed.add(str(value + 1))  # slice index -> image number from the top
        elif isinstance(value, str):
            if not re.fullmatch(r"[0-9.]+", value):  # UIDs are not numbers to check
                allowed.update(re.findall(r"\d+(?:\.\d+)?", value))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(findings_as_dict(findings))
    return allowed


def findings_as_dict(findings: Findings) -> dict:
    return findings.to_json_dict()


@pytest.mark.parametrize("kind", ["bleed", "clean"])
def test_every_number_in_an_answer_is_in_the_findings(kind, bleed, clean):
    findings = bleed if kind == "bleed" else clean
    allowed = _allowed_numbers(findings)
    history: list[Turn] = []
    for question in QUESTIONS:
        text = answer(findings, question, history)
        numbers = re.findall(r"\d+(?:\.\d+)?", text)
        invented = [n for n in numbers if n not in allowed]
        assert not invented, (question, invented, text)
        history.append(Turn(question, text))


def test_follow_up_questions_use_the_earlier_turns(bleed):
    first = answer(bleed, "Is the liver injured?")
    follow = answer(bleed, "What grade?", [Turn("Is the liver injured?", first)])
    assert follow.startswith("(Following on from your earlier question about the liver.)")
    assert "Liver:" in follow and "Spleen:" not in follow
    # Without the earlier turn the same words are about every graded organ.
    alone = answer(bleed, "What grade?")
    assert "Spleen: at least AAST grade IV" in alone and "Following on" not in alone
    # "And the spleen?" asks the earlier question about another organ.
    again = answer(bleed, "And the spleen?", [Turn("Where is the blood around the liver?", first)])
    assert "Spleen:" in again and "Collection" in again
    # A question about the whole case does not stick to the earlier organ.
    total = answer(bleed, "How much blood in total?", [Turn("Is the liver injured?", first)])
    assert "Following on" not in total and "Hemorrhage (all blood" in total


def test_hemodynamic_status_selects_the_branch(bleed):
    assert bleed.recommendation.hemodynamic_status == "unknown"
    unknown = answer(bleed, "What should we do?")
    assert "If stable:" in unknown and "If unstable:" in unknown
    unstable = answer(bleed, "What should we do?", status="unstable")
    assert "For an unstable patient" in unstable
    assert "laparotomy" in unstable and "embolisation" not in unstable
    stable = answer(bleed, "What should we do now that she is stable?")
    assert "embolisation" in stable and "laparotomy" not in stable
    assert "EAST-STABLE-BLUSH-ANGIOGRAPHY" in stable
    shock = answer(bleed, "What if she goes into shock?")
    assert "For an unstable patient" in shock and "laparotomy" in shock


def test_asking_whether_the_patient_is_stable_is_not_answered_from_the_images(bleed):
    text = answer(bleed, "Is the patient hemodynamically stable?")
    assert text.startswith("Whether the patient is hemodynamically stable is not something")
    assert "If stable:" in text and "If unstable:" in text and "For a stable patient" not in text


def test_status_the_findings_hold_no_advice_for_is_not_guessed(bleed):
    data = bleed.to_json_dict()
    stable = copy.deepcopy(data)
    kept = [r for r in data["recommendation"]["rules_fired"] if r["branch"] == "stable"]
    stable["recommendation"].update(
        hemodynamic_status="stable", branches={}, summary=kept[0]["statement"],
        actions=[r["statement"] for r in kept], rules_fired=[{**r, "branch": None} for r in kept])
    findings = Findings.from_json_dict(stable)
    text = answer(findings, "What should we do?", status="unstable")
    assert "The Findings hold no advice for an unstable patient" in text
    assert "laparotomy" not in text and "For the analysed status (stable)" in text
    assert "embolisation" in answer(findings, "What should we do?")


def test_bad_status_is_refused(bleed):
    with pytest.raises(ValueError, match="hemodynamic status"):
        answer(bleed, "What now?", status="critical")


def test_an_organ_is_called_injured_only_as_the_report_and_sr_call_it(bleed):
    """Blood beside the liver is adjacency: the answer says what the report and the SR say."""
    liver = answer(bleed, "Is the liver injured?")
    assert "Liver: no parenchymal injury detected" in liver and "adjacency" in liver
    spleen = answer(bleed, "Is the spleen injured?")
    assert "Spleen: injured on parenchymal evidence (intraparenchymal blood" in spleen
