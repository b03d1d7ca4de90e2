"""The readers' verdicts on the AI results of a study, as a DICOM Comprehensive SR, in the
spirit of IHE AI Results Assessment (AIRA): an assessment per finding, by a named person,
of a named AI result object.

Structure (codes: dicom_out.codes; the assessment concepts have no standard code we could
find, so they live in the private scheme 99TRAUMANODE, declared in the object):

  AI result assessment (root CONTAINER)
    HAS OBS CONTEXT: Observer Type = Device, the node that compiled the verdicts
    CONTAINS: COMPOSITE Assessed AI result -> each AI SR and SEG judged (also in the
      Current Requested Procedure Evidence Sequence, with their series and study)
    CONTAINS: one CONTAINER Assessment per verdict, ObservationDateTime = when it was made
      HAS OBS CONTEXT: Observer Type = Person, Person Observer Name (the reader's display
        name), Person Observer's Login Name (the account)
      CONTAINS: TEXT Finding (the finding's name), TEXT Tracking Identifier (its key, as
        the AI SR names it), UIDREF Tracking Unique Identifier (the AI SR's measurement group
        of that finding, when it has one), TEXT AI result (what the AI said), CODE
        Assessment Type = Accepted | Rejected | Modified, NUM Volume (cm3: the corrected
        volume, for a correction with one), TEXT Comment (the reader's note), COMPOSITE
        Assessed AI result (the AI SR judged)

dicom_out knows nothing of the node's database: the caller gives the verdicts as
Assessment records and the AI objects as datasets (headers are enough). UIDs derive from
the study and the verdicts it holds: exporting the same verdicts again gives the same
object; a new verdict, a new instance in the same series, which names the one before it
(PredecessorDocumentsSequence) when the node stored that one to the archive
(node.verdicts.archive).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from dicom_out import codes, uids
from dicom_out.device import MANUFACTURER, RESEARCH_USE

RelationshipType = hd.sr.RelationshipTypeValues

ASSESSMENT_REPORT = Code("AI-ASSESS-REPORT", codes.PRIVATE_SCHEME, "AI result assessment")
ASSESSMENT = Code("AI-ASSESSMENT", codes.PRIVATE_SCHEME, "Assessment")
ASSESSMENT_TYPE = Code("AI-ASSESS-TYPE", codes.PRIVATE_SCHEME, "Assessment type")
ASSESSED_RESULT = Code("AI-ASSESSED-OBJ", codes.PRIVATE_SCHEME, "Assessed AI result")
AI_RESULT = Code("AI-RESULT-VALUE", codes.PRIVATE_SCHEME, "AI result")
ASSESSMENT_TYPES = {
    "accepted": Code("AI-ACCEPTED", codes.PRIVATE_SCHEME, "Accepted"),
    "rejected": Code("AI-REJECTED", codes.PRIVATE_SCHEME, "Rejected"),
    "corrected": Code("AI-MODIFIED", codes.PRIVATE_SCHEME, "Modified"),
}
FINDING = Code("121071", "DCM", "Finding")
TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
TRACKING_UID = Code("112040", "DCM", "Tracking Unique Identifier")
SERIES_NUMBER = 9900  # after every version's results (dicom_out.device: 9001...)
SERIES_DESCRIPTION = f"Reader verdicts on AI results - {RESEARCH_USE}"
VERDICTS_SERIES = "verdicts/series"
_PN_UNSAFE = re.compile(r"[\\^=\x00-\x1f]")


@dataclass(frozen=True)
class Assessment:
    """One reader's current verdict on one finding of one AI result."""
    finding_key: str  # as the AI SR's tracking identifiers name it: hemorrhage, organ/spleen
    label: str
    ai_value: str
    verdict: str  # accepted | rejected | corrected
    reader: str  # the account (login) name
    reader_display_name: str
    when: dt.datetime  # UTC
    ai_sr_uid: str  # the SOP Instance UID of the AI SR judged
    corrected_volume_ml: float | None = None
    note: str | None = None
    tracking_uid: str | None = None  # the AI SR's group of this finding, when it has one
    verdict_id: int = 0


def verdict_uids(study_uid: str, assessments: Sequence[Assessment]) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID): the series per study, the instance per set
    of verdicts."""
    ids = ",".join(str(a.verdict_id) for a in sorted(assessments, key=lambda a: a.verdict_id))
    series = _uid(VERDICTS_SERIES, study_uid)
    return series, _uid("verdicts/instance", study_uid, ids)


def _uid(*parts: str) -> str:
    return f"2.25.{uuid.uuid5(uids.NAMESPACE, chr(31).join(parts)).int}"


def tracking_uids(ai_sr: Dataset) -> dict[str, str]:
    """Tracking Identifier -> Tracking Unique Identifier of each measurement group of an AI SR."""
    found: dict[str, str] = {}

    def walk(items, group: dict[str, str]) -> None:
        for item in items:
            meaning = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if meaning == TRACKING_IDENTIFIER.value and item.ValueType == "TEXT":
                group["id"] = str(item.TextValue)
            elif meaning == TRACKING_UID.value and item.ValueType == "UIDREF":
                group["uid"] = str(item.UID)
            if "ContentSequence" in item:
                inner: dict[str, str] = {}
                walk(item.ContentSequence, inner)
                if "uid" in inner:
                    found[inner.get("id", "")] = inner["uid"]

    walk(getattr(ai_sr, "ContentSequence", []), {})
    return found


def _person_name(display: str, fallback: str) -> str:
    """A PN value: the display name as given when it is already Family^Given, else the whole
    of it as the family name (no guessing which word is which)."""
    if "^" in (display or "") and "\\" not in display and "=" not in display:
        name = re.sub(r"[\x00-\x1f]", " ", display).strip()[:64]
        if name.strip("^ "):
            return name
    name = _PN_UNSAFE.sub(" ", display or "").strip()[:63] or fallback[:63]
    return name + "^"


def _assessment(a: Assessment, ai_sr_class: str) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=ASSESSMENT,
                                           relationship_type=RelationshipType.CONTAINS)
    container.ObservationDateTime = a.when.strftime("%Y%m%d%H%M%S")
    person = hd.sr.ObserverContext(
        observer_type=dcm_codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=_person_name(a.reader_display_name, a.reader), login_name=a.reader[:64]))
    items: list = [*person]
    contains = RelationshipType.CONTAINS
    items.append(hd.sr.TextContentItem(FINDING, a.label[:1024], relationship_type=contains))
    items.append(hd.sr.TextContentItem(TRACKING_IDENTIFIER, a.finding_key[:64],
                                       relationship_type=contains))
    if a.tracking_uid:
        items.append(hd.sr.UIDRefContentItem(TRACKING_UID, a.tracking_uid,
                                             relationship_type=contains))
    items.append(hd.sr.TextContentItem(AI_RESULT, a.ai_value[:1024], relationship_type=contains))
    items.append(hd.sr.CodeContentItem(ASSESSMENT_TYPE, ASSESSMENT_TYPES[a.verdict],
                                       relationship_type=contains))
    if a.corrected_volume_ml is not None:
        items.append(hd.sr.NumContentItem(codes.VOLUME, round(float(a.corrected_volume_ml), 3),
                                          codes.CUBIC_CENTIMETRE, relationship_type=contains))
    if a.note:
        items.append(hd.sr.TextContentItem(codes.COMMENT, a.note[:1024],
                                           relationship_type=contains))
    items.append(hd.sr.CompositeContentItem(ASSESSED_RESULT, ai_sr_class, a.ai_sr_uid,
                                            relationship_type=contains))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_verdict_sr(ai_objects: Sequence[Dataset], assessments: Sequence[Assessment], *,
                     node_name: str, node_version: str, predecessor: Dataset | None = None,
                     instance_number: int = 1) -> Dataset:
    """The Comprehensive SR of the verdicts on the AI results of one study.

    ai_objects: the AI SR (and SEG) of each analysis judged, headers enough, AI SR first;
    the SR's patient and study come from the first. Every assessment's ai_sr_uid must be
    one of them. predecessor: the study's previous verdict SR (its study, series, SOP class
    and instance UIDs are enough), which this one supersedes: named in
    PredecessorDocumentsSequence. instance_number: its place in the study's verdict series.
    Returns a plain pydicom Dataset."""
    if not assessments:
        raise ValueError("no verdicts to report")
    if not ai_objects:
        raise ValueError("no AI result objects to reference")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in ai_objects}
    study_uid = str(ai_objects[0].StudyInstanceUID)
    for ds in ai_objects:
        if str(ds.StudyInstanceUID) != study_uid:
            raise ValueError("the AI result objects belong to more than one study")
    missing = {a.ai_sr_uid for a in assessments} - set(by_uid)
    if missing:
        raise ValueError(f"verdicts on AI results not given as objects: {sorted(missing)}")
    root = hd.sr.ContainerContentItem(name=ASSESSMENT_REPORT)
    device = hd.sr.ObserverContext(
        observer_type=dcm_codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid(node_name), name=node_name[:64],
            manufacturer_name=MANUFACTURER[:64], model_name=f"{node_name} {node_version}"[:64]))
    items: list = [*device]
    for ds in ai_objects:
        items.append(hd.sr.CompositeContentItem(ASSESSED_RESULT, str(ds.SOPClassUID),
                                                str(ds.SOPInstanceUID),
                                                relationship_type=RelationshipType.CONTAINS))
    ordered = sorted(assessments, key=lambda a: (a.when, a.verdict_id))
    items += [_assessment(a, str(by_uid[a.ai_sr_uid].SOPClassUID)) for a in ordered]
    items.append(hd.sr.TextContentItem(
        codes.COMMENT, f"{RESEARCH_USE}: readers' verdicts on AI-generated results of "
                       f"{node_name} {node_version}.", relationship_type=RelationshipType.CONTAINS))
    root.ContentSequence = hd.sr.ContentSequence(items)
    series_uid, instance_uid = verdict_uids(study_uid, assessments)
    if predecessor is not None:
        if str(predecessor.StudyInstanceUID) != study_uid:
            raise ValueError("the previous verdict SR belongs to another study")
        if str(predecessor.SOPInstanceUID) == instance_uid:
            raise ValueError("a verdict SR cannot supersede itself")
    sr = hd.sr.ComprehensiveSR(
        evidence=list(ai_objects), content=root, series_instance_uid=series_uid,
        series_number=SERIES_NUMBER, sop_instance_uid=instance_uid,
        instance_number=max(1, int(instance_number)),
        previous_versions=[predecessor] if predecessor is not None else None,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=SERIES_DESCRIPTION, coding_schemes=[codes.private_coding_scheme()],
        specific_character_set="ISO_IR 192")  # UTF-8: names and notes in any language
    plain = Dataset({element.tag: element for element in sr})
    plain.file_meta = sr.file_meta
    plain.preamble = sr.preamble
    return plain
