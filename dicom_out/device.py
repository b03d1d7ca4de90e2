"""Who made the objects: algorithm identity, equipment attributes, descriptions.

dicom_out does not import the node: the caller names the algorithm and its
version; the backend that actually ran comes from Findings.provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_out import uids
from pipeline.findings import Findings, StageProvenance

MANUFACTURER = "trauma-node (research use only)"
# IHE AI Results (AIR): the purpose of reference of each algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")
# The stages whose backend is an algorithm of its own (volume loading and anatomy are fixed steps).
ALGORITHM_STAGES = ("triage", "segmentation", "quantification", "reading", "grading", "report")
CONTENT_CREATOR = "trauma-node^AI-generated"  # PN: the software made the content, no person
RESEARCH_USE = "RESEARCH USE ONLY"
DEVICE_SERIAL_NUMBER = "not-applicable"  # software, no serial number; highdicom requires a value
LO_MAX = 64  # Long String (LO) limit: SeriesDescription, ContentDescription, names
ST_MAX = 1024  # Short Text (ST) limit: SegmentDescription
OUTPUT_SERIES_NUMBER_BASE = 9000  # high, so that the results sort after the source series
# The place of each kind of object within a version's block of ten series numbers.
OUTPUT_SERIES_SLOTS = {"SEG": 1, "SR": 2, "SC": 3, "PDF": 4, "KOS": 5}
SERIES_NUMBERS_PER_VERSION = 10


def output_series_number(kind: str, series_version: int) -> int:
    """SeriesNumber of one kind of object of one version: version 1 has 9001 (SEG),
    9002 (SR), 9003 (summary SC), 9004 (PDF), 9005 (KOS); version 2 the same from 9011.

    A block of ten numbers per version: no two kinds or versions ever share a number,
    each version's series sort after the version before it, the last digit names
    the kind, and five numbers are left for kinds to come.
    """
    if series_version < 1:
        raise ValueError(f"series_version must be 1 or more, not {series_version}")
    return (OUTPUT_SERIES_NUMBER_BASE + SERIES_NUMBERS_PER_VERSION * (series_version - 1)
            + OUTPUT_SERIES_SLOTS[kind])


@dataclass(frozen=True)
class Algorithm:
    name: str  # the node (the caller names it): the device that made the objects
    version: str
    backend: str  # what ran, from Findings.provenance.backend_summary
    stages: tuple[StageProvenance, ...] = ()  # each stage's backend, version and weights
    # The reading's prompt profile (name, version, digest), from Findings.reading; '' for none.
    reading_prompt: str = ""

    @classmethod
    def of(cls, findings: Findings, name: str, version: str) -> "Algorithm":
        if not name or not version:
            raise ValueError("algorithm_name and algorithm_version must not be empty")
        ran = tuple(s for s in findings.provenance.stages if s.stage in ALGORITHM_STAGES)
        return cls(_lo(name), _lo(version), findings.provenance.backend_summary, ran,
                   prompt_label(findings.reading))

    def stage(self, stage: str) -> StageProvenance | None:
        return next((s for s in self.stages if s.stage == stage), None)

    def seg_identification(self) -> hd.AlgorithmIdentificationSequence:
        """The segmentation backend that drew the masks (TID 4019 in the SEG)."""
        ran = self.stage("segmentation")
        name, version = (ran.backend, ran.version) if ran else (self.name, self.version)
        return hd.AlgorithmIdentificationSequence(
            name=_lo(name), family=codes.cid7162.ArtificialIntelligence, version=_lo(version),
            source=_lo(f"{self.name} {self.version}"), parameters=self.parameters(ran))

    def sr_identification(self, stage: str = "segmentation") -> hd.sr.AlgorithmIdentification:
        """TID 4019 for a measurement group: the backend of the stage that produced it."""
        ran = self.stage(stage)
        if ran is None:
            return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)
        parameters = [f"{k}={v}" for k, v in (self.parameters(ran) or {}).items()]
        return hd.sr.AlgorithmIdentification(name=_lo(ran.backend), version=_lo(ran.version),
                                             parameters=parameters or None,
                                             manufacturer=_lo(f"{self.name} {self.version}"))

    def contributing_equipment(self) -> list[hd.ContributingEquipment]:
        """One item per algorithm that contributed (IHE AIR), each with a device UID that
        changes with its backend, version or weights."""
        items = []
        for ran in self.stages:
            item = hd.ContributingEquipment(  # highdicom allows CID 7005 only: replaced below
                manufacturer=_lo(MANUFACTURER), purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=_lo(ran.backend), software_versions=_lo(ran.version),
                contribution_description=short_text(
                    f"{ran.stage}: {ran.description}" + (f"; weights: {ran.weights}" if ran.weights else "")
                    + (f"; prompt profile: {self.prompt_of(ran)}" if self.prompt_of(ran) else "")))
            item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(PROCESSING_ALGORITHM)]
            # The algorithm's device UID: Device UID (0018,1002) is not in the Contributing
            # Equipment Sequence of the IODs dciodvfy knows, Device Serial Number (LO) is.
            item.DeviceSerialNumber = algorithm_device_uid(ran, self.prompt_of(ran))
            items.append(item)
        return items

    def prompt_of(self, ran: StageProvenance | None) -> str:
        """The prompt profile behind a stage: the reading's, for the reading stage."""
        return self.reading_prompt if ran is not None and ran.stage == "reading" else ""

    def parameters(self, ran: StageProvenance | None) -> dict[str, str] | None:
        """TID 4019 Algorithm Parameters: the weights, and the reading's prompt profile."""
        if ran is None:
            return None
        found = {"weights": _lo(ran.weights)} if ran.weights else {}
        if self.prompt_of(ran):
            found["prompt_profile"] = _lo(self.prompt_of(ran))
        return found or None

    def observer_context(self, device_uid: str) -> hd.sr.ObservationContext:
        """TID 1002 with a device observer: the report names the software, not a person."""
        return hd.sr.ObservationContext(observer_device_context=self.device_observer(device_uid))

    def device_observer(self, device_uid: str) -> hd.sr.ObserverContext:
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=self.name, manufacturer_name=_lo(MANUFACTURER),
            model_name=_lo(f"{self.name} {self.version}"))
        return hd.sr.ObserverContext(observer_type=codes.cid270.Device,
                                     observer_identifying_attributes=device)

    def notice(self) -> str:
        """The research-use sentence every textual output carries, naming the backend."""
        return (f"{RESEARCH_USE}: AI-generated by {self.name} {self.version}, not for diagnosis "
                f"or treatment decisions; every finding must be confirmed by a radiologist. "
                f"Backend: {self.backend}."
                + (f" Reading prompt profile: {self.reading_prompt}." if self.reading_prompt else ""))


def algorithm_device_uid(ran: StageProvenance, prompt: str = "") -> str:
    """One UID per stage, backend, version, weights and prompt profile: new weights or a new
    prompt, a new device."""
    return uids.device_uid(f"{ran.stage}|{ran.backend}|{ran.version}|{ran.weights}"
                           + (f"|{prompt}" if prompt else ""))


def prompt_label(reading: dict | None) -> str:
    """'rsna-adapter-v1 v1 (sha256:...)' from a reading's prompt_profile record; '' for none."""
    record = (reading or {}).get("prompt_profile")
    if not isinstance(record, dict) or not record.get("name"):
        return ""
    return f"{record['name']} v{record.get('version', '?')} ({record.get('digest', '')})".replace(" ()", "")


def copy_body_part(output: Dataset, source: Dataset) -> None:
    """BodyPartExamined as the source states it (General Series, Type 3)."""
    if source.get("BodyPartExamined"):
        output.BodyPartExamined = source.BodyPartExamined


def series_description(kind: str, series_version: int) -> str:
    """E.g. 'AI-generated hemorrhage SEG v1 - RESEARCH USE ONLY' (LO: 64 characters)."""
    return _lo(f"AI-generated hemorrhage {kind} v{series_version} - {RESEARCH_USE}")


def short_text(text: str) -> str:
    return _fit(text, ST_MAX)


def _lo(text: str) -> str:
    return _fit(text, LO_MAX)


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "~"
