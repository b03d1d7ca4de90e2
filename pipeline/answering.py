"""Answering questions about one study: the answerer interface, its registry and
the embedded grounded answerer (research use only).

An answerer takes a :class:`Question` (the text, the study's Findings, the
earlier turns of the conversation and optionally a hemodynamic status) and
returns an iterator of text pieces; joined, they are the answer. The caller
streams the pieces as they come and stores the joined text. Closing the
iterator early (``close()`` on a generator: the client went away) must release
whatever the answerer holds, so model answerers take the shared model lock
inside the generator and release it in ``finally``.

Backends, chosen by name (``settings.backends.answering`` when the pipeline
settings have it, else ``grounded``):

- ``grounded`` (:class:`GroundedAnswerer`, embedded, no weights, CPU): answers
  from Findings and the report alone: volumes, organs, grades, rules fired,
  where and on which slices. It never states a finding that is not in the
  record, says plainly when a question is outside what was found, and uses the
  earlier turns to resolve follow-ups ("what grade?" after "is the spleen
  injured?").
- ``medgemma`` (issue 5, not built yet): MedGemma through ``TextIteratorStreamer``
  with the chosen slices (``Question.images``, filled by the node when the
  answerer sets ``uses_images = True``) and the Findings in the prompt, waiting its
  turn for the shared model inside its generator. It is listed in pipeline.registry.ANSWERERS;
  the node picks it when ``settings.backends.answering`` names it.

Pure: no database, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

from pipeline.findings import BloodComponent, Findings, OrganFinding

HEMODYNAMIC_STATUSES = ("stable", "unstable", "unknown")


@dataclass(frozen=True)
class Turn:
    """One earlier question and the answer it got."""

    question: str
    answer: str


@dataclass(frozen=True)
class Question:
    text: str
    findings: Findings
    history: Sequence[Turn] = ()  # oldest first
    # Overrides the status the Findings were computed with (None: keep it).
    hemodynamic_status: str | None = None
    # The slices the triage chose, in anatomical order, as (DICOM file, frame or None):
    # filled by the node only for answerers with ``uses_images = True`` (model answerers).
    images: Sequence[tuple[str, int | None]] = ()


class Answerer(Protocol):
    name: str
    version: str
    description: str
    uses_images: bool  # whether Question.images should be filled

    def answer(self, question: Question) -> Iterator[str]:
        """Text pieces of the answer, in order; closing the iterator cancels it."""
        ...


def pieces(text: str) -> Iterator[str]:
    """Split text into streamable pieces (a word with the whitespace before it);
    joined they give the text back exactly."""
    yield from re.findall(r"\s*\S+|\s+$", text)


# --- the embedded grounded answerer -------------------------------------------------------

ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V"}
ORGAN_TITLES = {"liver": "Liver", "spleen": "Spleen", "kidney_right": "Right kidney",
                "kidney_left": "Left kidney", "bowel": "Bowel"}
GRADED = ("liver", "spleen")

# Words that name an organ in the Findings (checked after the sided kidney phrases).
_ORGAN_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("liver", (r"\bliver", r"\bhepat")),
    ("spleen", (r"\bspleen", r"\bsplen")),
    ("kidney_right", (r"\bright (?:kidney|renal)", r"\b(?:kidney|renal)\W+right\b")),
    ("kidney_left", (r"\bleft (?:kidney|renal)", r"\b(?:kidney|renal)\W+left\b")),
    ("bowel", (r"\bbowel", r"\bintestin", r"\bcolon\b", r"\bgut\b")),
)
_KIDNEYS = r"\bkidneys?\b|\brenal\b"

# Things a question may ask about that this pipeline does not assess.
_OUTSIDE: tuple[tuple[str, str], ...] = (
    (r"\bpancrea", "the pancreas"),
    (r"\bdiaphragm", "the diaphragm"),
    (r"\bmesenter", "the mesentery"),
    (r"\bbladder|\burin", "the urinary bladder and urine leaks"),
    (r"\bgall ?bladder|\bbiliar|\bbile\b", "the gallbladder and bile ducts"),
    (r"\badrenal", "the adrenal glands"),
    (r"\bstomach|\bgastric", "the stomach"),
    (r"\bfractur|\bbones?\b|\bspine\b|\bvertebra|\brib\b|\bribs\b|\bpelvic ring", "bones and fractures"),
    (r"\blungs?\b|\bpneumothora|\bhemothora|\bhaemothora|\bchest\b|\bthora", "the chest"),
    (r"\bbrain\b|\bhead\b|\bskull|\bintracran", "the head"),
    (r"\bfree air\b|\bpneumoperiton|\bperforat", "free air and perforation"),
    (r"\blacerat|\bcapsul|\btear\b|\brupture|\bdevasculari|\bshatter", "lacerations, capsule integrity and organ rupture"),
    (r"\bpseudoaneurysm|\bfistula", "pseudoaneurysms and fistulas (they need delayed-phase images)"),
    (r"\bvascular injur|\baort\w* (?:injur|dissect|tear)|\bdissection", "vascular injury of the great vessels"),
    (r"\buter|\bprostat|\bovar", "the pelvic organs"),
    (r"\bpatient'?s? (?:name|id|age|sex|history)|\bwho is the patient|\bhow old", "the patient's identity and history (the node keeps none)"),
)

# Topics, in the order their paragraphs are written.
_TOPICS: tuple[tuple[str, str], ...] = (
    ("overview", r"\bfind(?:ing|ings)?\b|\bfound\b|\binjur|\bdamage|\bnormal\b|\bwhat(?:'s| is) wrong|"
                 r"\banything\b|\bsummar|\bimpression|\boverall\b|\bok\b|\bfine\b|\bpositive\b|\bnegative\b"),
    ("volume", r"\bhow much\b|\bvolume|\bml\b|\bmillilit|\bamount|\bquantit|\bblood\b|\bbleed|"
               r"\bh(?:a)?emorrha|\bh(?:a)?emoperiton|\bfluid\b|\bcollection|\bhow big|\bsize\b|\bhematoma|\bhaematoma"),
    ("interval", r"\bprior\b|\bprevious (?:scan|ct|study|exam)|\bcompar|\bchange[sd]? since|"
                 r"\binterval|\bearlier (?:scan|ct|study|exam)|\bsince the (?:last|first)"),
    ("blush", r"\bblush|\bextravasat|\bactive(?:ly)? bleed|\bcontrast|\barterial|\bactive bleeding"),
    ("grade", r"\bgrade|\baast\b|\binjury scale|\bclass(?:ification)?\b"),
    ("location", r"\bwhere\b|\blocat|\bslices?\b|\bimages?\b|\blevel\b|\bregions?\b|\bside\b|"
                 r"\bwhich (?:part|space)|\bspaces?\b|\bposition|\bextent|\bspan"),
    ("risk", r"\brisk|\btier\b|\bsever|\bserious|\burgent|\bhow bad|\bdangerous|\bcritical"),
    ("management", r"\brecommend|\bmanag|\btreat|\bsurg|\boperat|\blaparotom|\bemboli|\bangiogra|"
                   r"\binterventional|\bnon-?operative|\bwhat should|\bnext step|\bwhat (?:now|to do)|"
                   r"\bdo we do|\bshould we|\bstable\b|\bunstable\b|\bh(?:a)?emodynamic|\bicu\b|\bobserv"),
    ("rules", r"\brules?\b|\bguideline|\beast\b|\bwhy\b|\bevidence|\bsource|\breference|\bjustif|\bbased on"),
    ("report", r"\breport\b|\bread (?:it|the report)|\bfull text"),
    ("method", r"\bhow (?:was|were|did|do you)|\bmethod|\bbackend|\bmodel\b|\balgorithm|\bthreshold|"
               r"\baccura|\breliab|\blimitation|\bconfiden|\bsure\b|\bmiss|\bsensitiv|\bprovenance|\bai\b"),
)

# Words that point back to an earlier turn.
_REFERS_BACK = re.compile(r"\b(?:it|its|it's|that|this|those|these|they|them|same|"
                          r"what about|how about|and the|also)\b")
# A follow-up that names a new organ and means "the same question about it".
_SAME_QUESTION = re.compile(r"^\W*(?:and|what about|how about|same for|also|now)\b")
_WHOLE_CASE = re.compile(r"\b(?:total|overall|all|whole|entire|altogether|everything|in general)\b")

_ABOUT = ("I can answer from this study's Findings: the amount of blood and where it is (regions, "
          "slices), active extravasation, the liver, spleen, kidneys and bowel, AAST grade "
          "estimates, the risk tier, the decision-support rules that fired, the report, the change since the "
          "patient's prior study when one was compared, and how the analysis was done.")


@dataclass
class _Parsed:
    organs: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    status: str | None = None
    asks_status: bool = False


def _parse(text: str) -> _Parsed:
    q = " " + text.lower().replace("’", "'") + " "
    parsed = _Parsed()
    for organ, patterns in _ORGAN_PATTERNS:
        if any(re.search(p, q) for p in patterns):
            parsed.organs.append(organ)
    if re.search(_KIDNEYS, q) and not {"kidney_right", "kidney_left"} & set(parsed.organs):
        parsed.organs += ["kidney_right", "kidney_left"]
    parsed.organs = sorted(set(parsed.organs), key=list(ORGAN_TITLES).index)
    parsed.topics = [name for name, pattern in _TOPICS if re.search(pattern, q)]
    parsed.outside = [what for pattern, what in _OUTSIDE if re.search(pattern, q)]
    if re.search(r"\b(?:is|are) (?:the patient|he|she|they|pt|patient)\s+(?:\w+ly\s+)?"
                 r"(?:stable|unstable)|\bh(?:a)?emodynamic(?:ally)? (?:status|stable|unstable)\?", q):
        parsed.asks_status = True  # asked, not told: the images cannot say
    elif re.search(r"\bunstable\b|\bnot stable\b|\bhypotens|\bshock\b", q):
        parsed.status = "unstable"
    elif re.search(r"\bstable\b", q):
        parsed.status = "stable"
    if parsed.status and "management" not in parsed.topics:
        parsed.topics.append("management")  # a status was told: what it means here
    return parsed


def _ml(value: float) -> str:
    return f"{value:.1f} mL"


def _region(name: str) -> str:
    return name.replace("_", " ")


def _organ_name(organ: str) -> str:
    return ORGAN_TITLES.get(organ, organ.replace("_", " ")).lower()


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class GroundedAnswerer:
    """Answers from the Findings and the report alone; every number comes from them."""

    name = "grounded"
    version = "1.0"
    uses_images = False
    description = ("embedded CPU baseline, no model weights: answers grounded in the Findings "
                   "and the report")

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    def answer(self, question: Question) -> Iterator[str]:
        yield from pieces(self.compose(question))

    # The whole answer as one text; answer() streams it.
    def compose(self, question: Question) -> str:
        f = question.findings
        parsed = _parse(question.text)
        context_note = ""
        if question.history:
            earlier = [_parse(t.question) for t in question.history]
            q = question.text.lower()
            short = len(re.findall(r"\w+", q)) <= 6
            refers = bool(_REFERS_BACK.search(q))
            organ_topics = {"overview", "volume", "blush", "grade", "location"}
            if not parsed.organs and (refers or (short and organ_topics & set(parsed.topics))) \
                    and not _WHOLE_CASE.search(q) and not parsed.outside:
                for turn in reversed(earlier):
                    if turn.organs:
                        parsed.organs = list(turn.organs)
                        context_note = (f"(Following on from your earlier question about the "
                                        f"{_join([_organ_name(o) for o in turn.organs])}.)")
                        break
            if not parsed.topics and parsed.organs and _SAME_QUESTION.search(q):
                for turn in reversed(earlier):
                    if turn.topics:
                        parsed.topics = list(turn.topics)
                        break
        status = question.hemodynamic_status or parsed.status
        if status is not None and status not in HEMODYNAMIC_STATUSES:
            raise ValueError(f"hemodynamic status must be one of {HEMODYNAMIC_STATUSES}, not {status!r}")

        if not f.assessment.assessed:  # no finding to answer from: say so, whatever was asked
            return "\n\n".join([
                "This study could not be assessed, so there is no hemorrhage result, no organ "
                "finding and no risk tier to answer from. Why: " + "; ".join(f.assessment.reasons) + ".",
                "Review the images directly. " + _ABOUT, self._footer(f)])
        paragraphs: list[str] = [context_note] if context_note else []
        outside_first = bool(parsed.outside) and not parsed.organs
        if outside_first:
            paragraphs.append(self._outside(parsed.outside))
        if not parsed.organs and not parsed.topics:
            if not parsed.outside:
                paragraphs.append("This question is outside what was found: the Findings of this "
                                  "study do not answer it, and I will not guess. " + _ABOUT)
                paragraphs.append("What was found: " + self._impression(f))
            paragraphs.append(self._footer(f))
            return "\n\n".join(paragraphs)

        topics = list(parsed.topics)
        if parsed.asks_status:
            paragraphs.append(
                "Whether the patient is hemodynamically stable is not something the images show: "
                "it comes from the clinical team. The analysis was given the status "
                f"\"{f.recommendation.hemodynamic_status}\"; choose one with the question to "
                "see the advice for it.")
            if "management" not in topics:
                topics.append("management")
        if parsed.organs:
            for organ in parsed.organs:
                paragraphs.append(self._organ(f, organ, topics))
            # Organ paragraphs already cover these topics for the organs asked about.
            topics = [t for t in topics if t not in ("overview", "grade", "volume", "blush", "location")
                      or (t == "volume" and re.search(r"\btotal|\ball\b|\boverall", question.text.lower()))]
        for topic in topics:
            paragraphs.append(getattr(self, f"_{topic}")(f, status))
        if parsed.outside and not outside_first:
            paragraphs.append(self._outside(parsed.outside))
        paragraphs.append(self._footer(f))
        return "\n\n".join(p for p in paragraphs if p)

    # --- paragraphs --------------------------------------------------------------------

    @staticmethod
    def _footer(f: Findings) -> str:
        return ("Research use only: decision support from the automated analysis "
                f"({f.provenance.backend_summary.split(' (')[0]}); confirm on the images.")

    @staticmethod
    def _outside(things: Sequence[str]) -> str:
        return ("This is outside what was found: this analysis does not assess "
                f"{_join(things)}, so the Findings say nothing about it, neither present nor "
                "absent. Review the images for it. " + _ABOUT)

    @staticmethod
    def _impression(f: Findings) -> str:
        reading = f.reading or {}
        pattern = reading.get("injury_pattern")
        text = (pattern[0].upper() + pattern[1:] + ". ") if pattern else ""
        return text + f"Risk tier: {f.risk_tier.upper()} ({'; '.join(f.risk_tier_reasons)})."

    def _overview(self, f: Findings, status: str | None) -> str:
        text = self._impression(f)
        involved = (f.reading or {}).get("organs_involved") or []
        if involved:
            text += f" Organs with blood beside or within them: {_join([_organ_name(o) for o in involved])}."
        graded = [o for o in f.organs.values() if o.aast_grade is not None]
        if graded:
            text += " AAST grade estimates (lower bounds): " + "; ".join(
                f"{_organ_name(o.organ)} at least grade {ROMAN.get(o.aast_grade, o.aast_grade)}"
                for o in graded) + "."
        missing = [_organ_name(o.organ) for o in f.organs.values() if not o.located]
        if missing:
            text += (f" Not located by this backend, so no finding either way: {_join(missing)}.")
        if f.volumes_ml.get("hemorrhage", 0) == 0:
            text += (" No blood was detected; this does not exclude injury (bowel, mesentery, "
                     "pancreas, diaphragm, small parenchymal tears).")
        return text

    @staticmethod
    def _volume(f: Findings, status: str | None = None) -> str:
        blood = f.volumes_ml.get("hemorrhage", 0.0)
        blush = f.volumes_ml.get("active_extravasation", 0.0)
        if blood == 0:
            return ("No blood-density collection above the minimum size was detected: "
                    f"hemorrhage {_ml(0.0)}. This does not exclude injury.")
        regions = sorted(f.volumes_by_region_ml.items(), key=lambda kv: -kv[1])
        text = (f"Hemorrhage (all blood, blush included): {_ml(blood)} in {len(f.components)} "
                f"collection{'s' if len(f.components) != 1 else ''}")
        if regions:
            text += ": " + ", ".join(f"{_region(r)} {_ml(v)}" for r, v in regions)
        text += "."
        text += (f" Active extravasation: {_ml(blush)}." if blush > 0
                 else " No active extravasation detected.")
        return text

    @staticmethod
    def _interval(f: Findings, status: str | None = None) -> str:
        """The change since the prior study (pipeline.interval), or why there is none."""
        statement = f.interval.get("statement")
        if statement:
            return statement
        return ("No comparison with a prior study was made for this study: the node's lookup "
                "of the patient's prior study was off when it was analysed, so these Findings "
                "say nothing about earlier studies.")

    @staticmethod
    def _blush(f: Findings, status: str | None = None) -> str:
        blush = f.volumes_ml.get("active_extravasation", 0.0)
        notes = [n for n in f.provenance.notes if "blush" in n.lower()]
        caveat = f" ({notes[0]}.)" if notes else ""
        if blush <= 0:
            return ("No active extravasation (contrast blush) was detected." + caveat +
                    " Blushes fainter than the threshold can be missed.")
        parts = []
        for c in f.components:
            if c.active_extravasation_ml > 0:
                where = (f"inside the {_organ_name(c.inside_organ)}" if c.inside_organ
                         else f"in the {_region(c.region)} collection (collection {c.id})")
                parts.append(f"{_ml(c.active_extravasation_ml)} {where}")
        return (f"Active extravasation (contrast blush): present, {_ml(blush)} in all"
                + (": " + "; ".join(parts) if parts else "") + "." + caveat)

    @staticmethod
    def _grade(f: Findings, status: str | None = None) -> str:
        graded = [o for o in f.organs.values() if o.aast_grade is not None]
        if not graded:
            return ("No AAST grade is supported by the evidence this backend measures (blood and "
                    "contrast blush; it grades only the spleen and liver, as lower bounds).")
        lines = []
        for o in graded:
            lines.append(f"{ORGAN_TITLES.get(o.organ, o.organ)}: at least AAST grade "
                         f"{ROMAN.get(o.aast_grade, o.aast_grade)} ({', '.join(o.aast_rules)}; "
                         f"{o.aast_scale}).")
        ungraded = [_organ_name(o) for o in GRADED if o in f.organs and f.organs[o].aast_grade is None]
        if ungraded:
            lines.append(f"No grade supported for the {_join(ungraded)}.")
        return " ".join(lines) + " Grades are lower bounds: lacerations and the capsule are not measured."

    @staticmethod
    def _slices(f: Findings, c: BloodComponent) -> str:
        total = (f.series.get("shape") or [len(f.series.get("slices") or [])])[0]
        first, last = (c.slices + c.slices)[:2] if c.slices else (None, None)
        if first is None:
            return ""
        text = f"images {first + 1} to {last + 1} of {total} counted from the most cranial"
        positions = f.series.get("slices") or []
        try:
            z0, z1 = positions[first]["position"][2], positions[last]["position"][2]
            text += f" (z {z0:.1f} to {z1:.1f} mm)"
        except (IndexError, KeyError, TypeError):
            pass
        return text

    def _component(self, f: Findings, c: BloodComponent) -> str:
        text = f"Collection {c.id}: {_region(c.region)}, {_ml(c.volume_ml)}"
        if c.active_extravasation_ml > 0:
            text += f" with {_ml(c.active_extravasation_ml)} of active extravasation"
        if c.inside_organ:
            text += f", inside the {_organ_name(c.inside_organ)}"
        if c.organs_touched:
            text += f", touching the {_join([_organ_name(o) for o in c.organs_touched])}"
        where = self._slices(f, c)
        if where:
            text += f", on {where}"
        text += f", largest extent {c.max_extent_mm:.0f} mm."
        return text

    def _location(self, f: Findings, status: str | None = None) -> str:
        if not f.components:
            return "There is nothing to locate: no blood collection was detected."
        text = " ".join(self._component(f, c) for c in f.components)
        chosen = list(getattr(f.triage, "chosen", []) or [])
        if chosen:
            text += (" Slices the triage stage flagged as most suspicious (image numbers from the "
                     f"most cranial): {', '.join(str(i + 1) for i in chosen)}.")
        return text

    @staticmethod
    def _risk(f: Findings, status: str | None = None) -> str:
        text = f"Risk tier: {f.risk_tier.upper()} ({'; '.join(f.risk_tier_reasons)})."
        severity = (f.reading or {}).get("severity_estimate")
        if severity:
            text += f" Severity estimate of the reading stage: {severity}."
        return text

    @staticmethod
    def _recommendation_for(f: Findings, status: str) -> tuple[list[str], list[str]] | None:
        """(actions, rule ids) for a hemodynamic status, as the Findings hold them;
        None when they hold no advice for that status."""
        rec = f.recommendation
        if status == rec.hemodynamic_status:
            return list(rec.actions), [r.id for r in rec.rules_fired if r.branch is None]
        if status in rec.branches:
            ids = [r.id for r in rec.rules_fired if r.branch == status]
            return [rec.branches[status]], ids
        if f.volumes_ml.get("hemorrhage", 0.0) == 0 and not rec.branches:
            # No blood: the same scope statement for every status.
            return list(rec.actions), [r.id for r in rec.rules_fired if r.branch is None]
        return None

    def _management(self, f: Findings, status: str | None) -> str:
        rec = f.recommendation
        status = status or rec.hemodynamic_status
        if status == "unknown" and rec.branches:
            lines = ["Hemodynamic status not given: the management depends on it."]
            for branch in ("stable", "unstable"):
                if branch in rec.branches:
                    ids = [r.id for r in rec.rules_fired if r.branch == branch]
                    lines.append(f"If {branch}: {rec.branches[branch]}"
                                 + (f" (rules {', '.join(ids)})" if ids else ""))
            lines += [a for a in rec.actions if not a.startswith("Hemodynamic status not given")]
        else:
            article = "an" if status[0] in "aeiou" else "a"
            found = self._recommendation_for(f, status)
            if found is None:
                # The analysis ran for another status and kept no advice for this one.
                actions, ids = self._recommendation_for(f, rec.hemodynamic_status) or ([], [])
                lines = [f"The Findings hold no advice for {article} {status} patient: this study "
                         f"was analysed for a hemodynamic status of {rec.hemodynamic_status}, and "
                         "I will not guess the rules for another. Re-run the analysis with that "
                         f"status, or with \"unknown\", which keeps every branch."]
                if actions:
                    lines.append(f"For the analysed status ({rec.hemodynamic_status}): "
                                 + " ".join(actions))
            else:
                actions, ids = found
                lines = [(f"For {article} {status} patient" if status != "unknown"
                          else "Hemodynamic status unknown")
                         + (": " + " ".join(actions) if actions else ": no rule applies.")]
            if ids:
                lines.append(f"Rules fired: {', '.join(ids)}.")
        lines.append("Decision support aligned with EAST 2012, research use only: the treating "
                     "team decides.")
        return "\n".join(lines)

    @staticmethod
    def _rules(f: Findings, status: str | None = None) -> str:
        lines = ["Rules that fired:"]
        for r in f.recommendation.rules_fired:
            branch = f" [only if {r.branch}]" if r.branch else ""
            lines.append(f"- {r.id}{branch}: {r.statement} Source: {r.source}.")
        for o in f.organs.values():
            for rule in o.aast_rules:
                lines.append(f"- {rule}: {ORGAN_TITLES.get(o.organ, o.organ)} grade "
                             f"{ROMAN.get(o.aast_grade, o.aast_grade)}. Source: {o.aast_scale}.")
        if f.risk_tier_reasons:
            lines.append(f"Risk tier {f.risk_tier.upper()} because: {'; '.join(f.risk_tier_reasons)}.")
        return "\n".join(lines)

    @staticmethod
    def _report(f: Findings, status: str | None = None) -> str:
        return "The report of this study:\n\n" + f.report.strip()

    @staticmethod
    def _method(f: Findings, status: str | None = None) -> str:
        p = f.provenance
        stages = ", ".join(f"{s.stage} ({s.backend})" for s in p.stages)
        text = f"How it was analysed: {p.backend_summary}. Stages: {stages}."
        if p.notes:
            text += " Limitations noted for this series: " + "; ".join(p.notes) + "."
        text += (" The embedded baseline measures blood and contrast density; lacerations, the "
                 "capsule, bowel and mesenteric injury are not assessed, and grades are lower bounds.")
        return text

    def _organ(self, f: Findings, organ: str, topics: list[str]) -> str:
        title = ORGAN_TITLES.get(organ, organ)
        o: OrganFinding | None = f.organs.get(organ)
        if o is None:
            return f"{title}: not in the Findings of this study; nothing can be said about it."
        if not o.located:
            return (f"{title}: not located by this backend, so there is no finding for it either "
                    "way (this does not mean it is normal).")
        # The verdict first, as the report and the SR state it: injury only on evidence inside it.
        parts = ["injured on parenchymal evidence (" + "; ".join(o.injury_evidence) + ")" if o.injured
                 else "no parenchymal injury detected"]
        parts.append(f"{_ml(o.adjacent_blood_ml)} of blood beside it (adjacency, not by itself evidence "
                     "that it is injured)" if o.adjacent_blood_ml > 0 and not o.injured
                     else f"{_ml(o.adjacent_blood_ml)} of blood beside it" if o.adjacent_blood_ml > 0
                     else "no blood detected beside it")
        if o.intraparenchymal_blood_ml > 0:
            parts.append(f"{_ml(o.intraparenchymal_blood_ml)} within the parenchyma (largest "
                         f"{o.largest_intraparenchymal_mm:.0f} mm)")
        if o.blush_inside:
            parts.append("active extravasation (contrast blush) within the parenchyma")
        if o.blush_outside_adjacent:
            parts.append("active extravasation (contrast blush) in the adjacent collection")
        elif not o.blush_inside and ("blush" in topics or o.adjacent_blood_ml > 0):
            parts.append("no contrast blush at this organ")
        text = f"{title}: " + "; ".join(parts) + "."
        if o.aast_grade is not None:
            text += (f" AAST grade at least {ROMAN.get(o.aast_grade, o.aast_grade)} "
                     f"({', '.join(o.aast_rules)}; {o.aast_scale}), a lower bound from the image "
                     "evidence.")
        elif organ in GRADED:
            text += f" No AAST grade is supported by the measured evidence: {o.note}."
        else:
            text += f" {o.note[0].upper() + o.note[1:]}."
        touching = [c for c in f.components if organ in c.organs_touched or c.inside_organ == organ]
        if touching and (o.adjacent_blood_ml > 0 or o.intraparenchymal_blood_ml > 0):
            text += " " + " ".join(self._component(f, c) for c in touching)
        return text

