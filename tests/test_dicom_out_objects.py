"""dicom_out: the SEG and the TID 1500 SR checked for content, not only existence.

Small phantoms (40 slices of 128x128): a large bleed with a contrast blush, the
same as one multi-frame (Legacy Converted Enhanced CT) file, and one with no
blood. The pipeline runs on each; the objects built from its Findings are
compared with its label volume, its volumes and the source series.
"""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import dicom_out.seg
from dicom_out import build_outputs, build_seg, build_sr
from dicom_out.device import output_series_number
from dicom_out.source import source_images
from pipeline import PipelineSettings, run_series
from pipeline.backends.hu_segmentation import HuSegmentation
from pipeline.findings import Findings
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY, HEMORRHAGE

DCIODVFY = "/usr/bin/dciodvfy"
DSRDUMP = "/usr/bin/dsrdump"
ALGORITHM = dict(algorithm_name="trauma-node test", algorithm_version="9.8.7")
SMALL = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.0, 3.0), slice_spacing=5.0)
# dciodvfy does not know private coding scheme designators, even when declared in
# CodingSchemeIdentificationSequence as PS3.3 asks: the one warning accepted.
ACCEPTED_WARNING = re.compile(r"^Warning - Unrecognized defined term <99TRAUMANODE> "
                              r"for value 1 of attribute <Coding Scheme Designator>$")


@dataclass
class Built:
    findings: Findings
    sources: list[Dataset]  # headers only, in file order
    seg_path: Path
    sr_path: Path

    @property
    def seg(self) -> Dataset:
        return pydicom.dcmread(self.seg_path)

    @property
    def sr(self) -> Dataset:
        return pydicom.dcmread(self.sr_path)

    @property
    def slice_uids(self) -> list[str]:
        return [s["sop_instance_uid"] for s in self.findings.series["slices"]]

    @property
    def instance_uids(self) -> list[str]:
        """The source instances in volume order (one for a multi-frame source)."""
        return list(dict.fromkeys(self.slice_uids))

    @property
    def slice_keys(self) -> list[tuple[str, int | None]]:
        """(SOP Instance UID, frame number or None) of each slice, in volume order."""
        return [(s["sop_instance_uid"], s["frame"]) for s in self.findings.series["slices"]]


def _build(phantom_factory, tmp_path_factory, name: str, **spec) -> Built:
    truth = phantom_factory(name, **SMALL, **spec)
    findings = run_series(truth.paths, PipelineSettings())
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in truth.paths]
    outputs = build_outputs(findings, sources, series_version=1, **ALGORITHM)
    out = tmp_path_factory.mktemp(f"dicom_out_{name}")
    outputs.seg.save_as(out / "seg.dcm")  # as the node saves them: plain save_as
    outputs.sr.save_as(out / "sr.dcm")
    return Built(findings, sources, out / "seg.dcm", out / "sr.dcm")


@pytest.fixture(scope="module")
def bleed(phantom_factory, tmp_path_factory) -> Built:
    return _build(phantom_factory, tmp_path_factory, "dicom_out_bleed", blood="large", blush=True)


@pytest.fixture(scope="module")
def clean(phantom_factory, tmp_path_factory) -> Built:
    return _build(phantom_factory, tmp_path_factory, "dicom_out_clean", blood="none")


@pytest.fixture(params=["bleed", "clean", "multi_frame"])
def built(request) -> Built:
    return request.getfixturevalue(request.param)


# --- SEG ---------------------------------------------------------------------

def _segment_volumes(seg: Dataset, slice_keys: list[tuple[str, int | None]]) -> dict[int, np.ndarray]:
    """Rebuild each segment's mask in volume order from the SEG's frames, mapping
    every frame back to its source slice (instance, and frame for a multi-frame
    source) through DerivationImageSequence."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    slice_of = {key: k for k, key in enumerate(slice_keys)}
    shared = seg.SharedFunctionalGroupsSequence[0]
    volumes = {int(s.SegmentNumber): np.zeros((len(slice_keys), seg.Rows, seg.Columns), bool)
               for s in seg.SegmentSequence}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        identification = (group if "SegmentIdentificationSequence" in group else shared)
        number = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        frame_number = source.get("ReferencedFrameNumber")
        k = slice_of[(source.ReferencedSOPInstanceUID, int(frame_number) if frame_number else None)]
        assert not volumes[number][k].any(), "two frames of one segment for one source slice"
        volumes[number][k] = frame.astype(bool)
    return volumes


@pytest.fixture(scope="module")
def multi_frame(bleed, tmp_path_factory) -> Built:
    """The bleed phantom as one Legacy Converted Enhanced CT file."""
    folder = tmp_path_factory.mktemp("dicom_out_multi_frame")
    first = bleed.sources[0]
    paths = [Path(ds.filename) for ds in bleed.sources]
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in paths], series_instance_uid=hd.UID(),
        series_number=int(first.SeriesNumber) + 1, sop_instance_uid=hd.UID(), instance_number=1)
    image.save_as(folder / "enhanced.dcm", enforce_file_format=True)
    findings = run_series([folder / "enhanced.dcm"], PipelineSettings())
    sources = [pydicom.dcmread(folder / "enhanced.dcm", stop_before_pixels=True)]
    outputs = build_outputs(findings, sources, series_version=1, **ALGORITHM)
    outputs.seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    outputs.sr.save_as(folder / "sr.dcm", enforce_file_format=True)
    return Built(findings, sources, folder / "seg.dcm", folder / "sr.dcm")


@pytest.fixture(params=["bleed", "multi_frame"])
def bled(request) -> Built:
    return request.getfixturevalue(request.param)


def test_seg_pixels_equal_the_pipeline_masks(bled):
    labels = bled.findings.labels
    volumes = _segment_volumes(bled.seg, bled.slice_keys)
    labels_of = {s.SegmentLabel: int(s.SegmentNumber) for s in bled.seg.SegmentSequence}
    assert set(labels_of) == {"Hemorrhage, non-enhancing", "Active extravasation"}
    non_enhancing, blush = volumes[labels_of["Hemorrhage, non-enhancing"]], volumes[labels_of["Active extravasation"]]
    np.testing.assert_array_equal(non_enhancing, labels == HEMORRHAGE)
    np.testing.assert_array_equal(blush, labels == ACTIVE_EXTRAVASATION)
    # Every voxel in one segment at most (OHIF halves the volumes of overlapping segments),
    # and together they are all the blood.
    assert not (non_enhancing & blush).any() and blush.any()
    np.testing.assert_array_equal(non_enhancing | blush, labels > 0)
    # Empty frames are left out, so there are fewer frames than slices x segments.
    assert int(bled.seg.NumberOfFrames) == sum(int(v.any(axis=(1, 2)).sum()) for v in volumes.values())
    assert bled.seg.get("SegmentsOverlap", "NO") in ("NO", "UNDEFINED")


def test_seg_pixels_read_back_by_highdicom(bleed):
    seg = hd.seg.segread(bleed.seg_path)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=bleed.slice_uids,
                                               segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[..., 0] > 0, bleed.findings.labels == HEMORRHAGE)
    np.testing.assert_array_equal(pixels[..., 1] > 0, bleed.findings.labels == ACTIVE_EXTRAVASATION)


def test_seg_without_blood_has_one_empty_hemorrhage_segment(clean):
    seg = clean.seg
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Hemorrhage, non-enhancing (none detected)"]
    assert not _segment_volumes(seg, clean.slice_keys)[1].any()


def test_seg_describes_the_findings(built):
    seg, source = built.seg, built.sources[0]
    for segment in seg.SegmentSequence:
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        # TID 4019 names the backend that drew the masks; the node is its source.
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("hu-baseline", HuSegmentation.version)
        assert algorithm.AlgorithmSource == "trauma-node test 9.8.7"
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
        assert segment.AnatomicRegionSequence[0].CodeValue == "83670000"
        assert len(segment.RecommendedDisplayCIELabValue) == 3
        assert segment.TrackingUID and segment.TrackingID
    types = [(s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
              s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) for s in seg.SegmentSequence]
    assert types[0] == ("50960005", "SCT")
    assert types[1:] in ([], [("111428", "DCM")])
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert "AI-generated" in seg.SeriesDescription and "RESEARCH USE" in seg.SeriesDescription
    for segment in seg.SegmentSequence:
        assert "RESEARCH USE" in segment.SegmentDescription
        assert "embedded CPU baseline" in segment.SegmentDescription
    assert "RESEARCH USE" in seg.ImageComments and "embedded CPU baseline" in seg.ImageComments


def test_seg_references_resolve_to_the_source_instances(built):
    seg = built.seg
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == built.sources[0].SeriesInstanceUID
    referenced = [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(built.instance_uids)
    source_uids = set(built.instance_uids)
    for group in seg.PerFrameFunctionalGroupsSequence:
        assert group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in source_uids


# Attributes highdicom fills from the clock or at random: they differ between any two builds.
VOLATILE = {"00080012", "00080013", "00080023", "00080033",  # instance creation, content date/time
            "0018A002",  # Contribution DateTime
            "00209164"}  # Dimension Organization UID


def _stable(value):
    """A to_json_dict() without the volatile attributes, at any depth."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


@pytest.mark.parametrize("sparse", [False, True], ids=["bleed", "every_other_slice"])
def test_seg_from_the_labelled_slices_equals_the_seg_from_every_image(bleed, monkeypatch, sparse):
    """build_seg gives highdicom only the source images whose slice has a label (and
    the first): the SEG must be the one highdicom builds from every source image."""
    findings = bleed.findings
    if sparse:  # the images given are then not regularly spaced: Spacing Between Slices
        labels = findings.labels.copy()
        labels[1::2] = 0
        findings = dataclasses.replace(findings, labels=labels)
    picked = dicom_out.seg._frames_with_labels(findings.labels,
                                               source_images(findings, bleed.sources))
    assert picked is not None and 1 < len(picked) < len(bleed.sources)  # the fast path is tested
    fast = build_seg(findings, bleed.sources, series_version=1, **ALGORITHM)
    monkeypatch.setattr(dicom_out.seg, "_frames_with_labels", lambda labels, source: None)
    every = build_seg(findings, bleed.sources, series_version=1, **ALGORITHM)
    assert int(every.NumberOfFrames) < 2 * len(bleed.sources)  # empty frames omitted there too
    assert _stable(fast.to_json_dict()) == _stable(every.to_json_dict())


# --- SR ----------------------------------------------------------------------

def _items(item: Dataset):
    """Every content item of an SR tree, depth first."""
    for child in item.get("ContentSequence", []):
        yield child
        yield from _items(child)


def _named(items, meaning: str) -> list[Dataset]:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def test_sr_volumes_equal_the_findings(bled):  # a TID 1500 measurement report
    built = bled
    report = hd.sr.srread(built.sr_path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    blush = built.findings.volumes_ml["active_extravasation"] > 0
    assert [g.tracking_identifier for g in groups] == ["Hemorrhage, non-enhancing",
                                                       *(["Active extravasation"] * blush)]
    for group in groups:
        key = {"Hemorrhage, non-enhancing": "non_enhancing_hemorrhage",
               "Active extravasation": "active_extravasation"}[group.tracking_identifier]
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.value == pytest.approx(built.findings.volumes_ml[key], abs=1e-6)
        assert volume.unit.value == "cm3" and volume.unit.scheme_designator == "UCUM"


def test_sr_groups_reference_the_seg_segments(bled):  # a TID 1500 measurement report
    built = bled
    seg, report = built.seg, hd.sr.srread(built.sr_path)
    groups = report.content.get_volumetric_roi_measurement_groups()
    tracking = {s.TrackingID: (s.TrackingUID, int(s.SegmentNumber)) for s in seg.SegmentSequence}
    assert len(groups) == len(seg.SegmentSequence)
    for group in groups:
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        uid, number = tracking[group.tracking_identifier]
        assert group.tracking_uid == uid  # the SR finding and the SEG segment are one finding
        assert segment.referenced_segment_numbers == [number]
        assert segment.source_series_for_segmentation.value == built.sources[0].SeriesInstanceUID


def test_sr_image_library_and_evidence_are_the_source_instances(bled):  # a TID 1500 measurement report
    built = bled
    sr = built.sr
    library = _named(sr.ContentSequence, "Image Library")[0]
    entries = [i for i in _items(library) if i.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == built.instance_uids
    assert [e.ReferencedSOPSequence[0].ReferencedSOPClassUID for e in entries] == [
        built.sources[0].SOPClassUID] * len(entries)
    # The descriptors all images share, once for the group (TID 1600 row 3).
    (group,) = library.ContentSequence
    frame_of_reference = _named(group.ContentSequence, "Frame of Reference UID")
    assert [i.UID for i in frame_of_reference] == [built.sources[0].FrameOfReferenceUID]
    modality = _named(group.ContentSequence, "Modality")
    assert [i.ConceptCodeSequence[0].CodeValue for i in modality] == ["CT"]
    (evidence,) = [s for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                   if s.SeriesInstanceUID == built.sources[0].SeriesInstanceUID]
    assert sorted(i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence) == sorted(
        built.instance_uids)
    assert sr.StudyInstanceUID == built.sources[0].StudyInstanceUID


def test_sr_states_the_evaluations_and_the_texts(bleed):
    findings, items = bleed.findings, list(_items(bleed.sr))
    value = lambda item: item.ConceptCodeSequence[0].CodeMeaning  # noqa: E731
    assert [value(i) for i in _named(items, "Hemorrhage risk tier")] == [findings.risk_tier.capitalize()]
    assert value(_named(items, "Extravasation")[0]) == "Present"
    spleen_grade = _named(items, "AAST injury grade estimate, lower bound")
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in spleen_grade] == [
        o.aast_grade for o in findings.organs.values() if o.aast_grade is not None]
    observer = _named(items, "Device Observer Name")[0]
    assert observer.TextValue == "trauma-node test"
    procedure = _named(items, "Procedure reported")[0]
    assert procedure.ConceptCodeSequence[0].CodeValue == "36813-4"  # CT abdomen and pelvis
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in items if i.ValueType == "TEXT"
             and i.ConceptNameCodeSequence[0].CodeMeaning in ("Impression", "Recommendation", "Findings",
                                                                "Comment")}
    assert set(texts) == {"Impression", "Recommendation", "Findings", "Comment"}
    for text in texts.values():
        assert "RESEARCH USE" in text.upper()
    assert findings.provenance.backend_summary in texts["Comment"]
    assert findings.report.strip() in texts["Findings"]
    for rule in findings.recommendation.rules_fired:
        assert rule.id in texts["Recommendation"]
    assert "RESEARCH USE" in bleed.sr.SeriesDescription
    assert (bleed.sr.VerificationFlag, bleed.sr.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")


def test_sr_without_blood_is_a_text_report_of_the_absence(clean):
    """Nothing to point at on the images: a TID 2000 report that says so, in words and codes."""
    sr = clean.sr
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"  # Diagnostic imaging report
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    items = list(_items(sr))
    assert not [i for i in items if i.ValueType in ("SCOORD", "SCOORD3D", "IMAGE")]
    (volume,) = _named(items, "Volume")
    assert float(volume.MeasuredValueSequence[0].NumericValue) == 0.0
    assert [i.ConceptCodeSequence[0].CodeMeaning for i in _named(items, "Hemorrhage risk tier")] == ["None"]
    impression = _named(items, "Impression")[0].TextValue
    assert "RESEARCH USE" in impression and "NONE" in impression
    assert "does not exclude" in _named(items, "Recommendation")[0].TextValue
    (evidence,) = [s for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                   if s.SeriesInstanceUID == clean.sources[0].SeriesInstanceUID]
    assert sorted(i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence) == sorted(
        clean.instance_uids)


# --- validators, reading back, stable UIDs ------------------------------------

def _dciodvfy_problems(path: Path) -> tuple[list[str], list[str]]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return ([l for l in lines if l.startswith("Error")],
            [l for l in lines if l.startswith("Warning") and not ACCEPTED_WARNING.match(l)])


def test_dciodvfy_finds_no_errors(built):
    for path in (built.seg_path, built.sr_path):
        errors, warnings = _dciodvfy_problems(path)
        assert errors == [], f"{path.name}: {errors}"
        assert warnings == [], f"{path.name}: {warnings}"


def test_dsrdump_prints_the_tree(bleed):
    result = subprocess.run([DSRDUMP, "+Pl", str(bleed.sr_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for text in ("Imaging Measurement Report", "Image Library", "Tracking Identifier",
                 '"Volume"', "Referenced Segment", "Recommendation", "RESEARCH USE ONLY",
                 "Hemorrhage risk tier"):
        assert text in result.stdout, text


def test_objects_load_back(built):
    for path in (built.seg_path, built.sr_path):
        assert path.read_bytes()[128:132] == b"DICM"  # a DICOM file, not a bare dataset
    seg = hd.seg.segread(built.seg_path)
    assert seg.number_of_segments == len(pydicom.dcmread(built.seg_path).SegmentSequence)
    report = hd.sr.srread(built.sr_path)
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    if built.sr.ConceptNameCodeSequence[0].CodeValue == "126000":  # Imaging Measurement Report
        assert report.content.get_observer_contexts()
    else:  # the text report of a series without blood names its device observer too
        assert _named(_items(built.sr), "Device Observer Name")[0].TextValue == "trauma-node test"


def test_uids_are_stable_per_series_version(bleed):
    again = build_outputs(bleed.findings, list(reversed(bleed.sources)), series_version=1, **ALGORITHM)
    first_seg, first_sr = bleed.seg, bleed.sr
    for old, new in ((first_seg, again.seg), (first_sr, again.sr)):
        assert (new.SeriesInstanceUID, new.SOPInstanceUID) == (old.SeriesInstanceUID, old.SOPInstanceUID)
    assert again.seg.PixelData == first_seg.PixelData  # the source order given does not matter
    version_2 = build_outputs(bleed.findings, bleed.sources, series_version=2, **ALGORITHM)
    uids_1 = {first_seg.SeriesInstanceUID, first_seg.SOPInstanceUID, first_sr.SeriesInstanceUID,
              first_sr.SOPInstanceUID}
    uids_2 = {version_2.seg.SeriesInstanceUID, version_2.seg.SOPInstanceUID,
              version_2.sr.SeriesInstanceUID, version_2.sr.SOPInstanceUID}
    assert len(uids_1) == len(uids_2) == 4 and not uids_1 & uids_2
    assert all(uid.startswith("2.25.") for uid in uids_1)
    numbers = [int(o.SeriesNumber) for o in (first_seg, first_sr, version_2.seg, version_2.sr)]
    assert numbers == sorted(set(numbers))  # distinct, and version 2 sorts after version 1


def test_seg_and_sr_series_numbers_never_collide_across_versions():
    numbers = [output_series_number(kind, version)
               for version in range(1, 1001) for kind in ("SEG", "SR")]
    assert len(set(numbers)) == len(numbers)
    assert numbers == sorted(numbers)  # each version's pair after the version before
    assert min(numbers) > 9000  # after the scanner's own series
    with pytest.raises(ValueError):
        output_series_number("SEG", 0)


def test_without_label_volume_the_sr_stands_alone(bleed, tmp_path):
    findings = Findings.from_json_dict(bleed.findings.to_json_dict())  # as read from findings.json
    outputs = build_outputs(findings, bleed.sources, series_version=1, **ALGORITHM)
    assert outputs.seg is None
    outputs.sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    errors, warnings = _dciodvfy_problems(tmp_path / "sr.dcm")
    assert errors == [] and warnings == []
    items = list(_items(outputs.sr))
    assert not [i for i in items if i.ValueType == "IMAGE" and "ReferencedSegmentNumber"
                in i.ReferencedSOPSequence[0]]
    volumes = [float(i.MeasuredValueSequence[0].NumericValue) for i in _named(items, "Volume")]
    # The two segments, their total, then one per compartment (each mL once: they add up).
    assert volumes[:3] == [findings.volumes_ml["non_enhancing_hemorrhage"],
                           findings.volumes_ml["active_extravasation"], findings.volumes_ml["hemorrhage"]]
    assert sum(volumes[3:]) == pytest.approx(findings.volumes_ml["hemorrhage"], abs=1e-3)


def test_missing_source_instances_are_refused(bleed):
    sources = list(bleed.sources)
    random.Random(0).shuffle(sources)
    with pytest.raises(ValueError, match="missing"):
        build_seg(bleed.findings, sources[1:], series_version=1, **ALGORITHM)


def test_sr_refuses_a_seg_of_other_findings(bleed, clean):
    with pytest.raises(ValueError, match="segment"):
        build_sr(bleed.findings, bleed.sources, clean.seg, series_version=1, **ALGORITHM)


def test_a_later_version_names_the_report_it_supersedes(bleed, tmp_path):
    """As the node writes them: data/results/<study>/<series>/v<N>/. The v3 report names
    v1's as its predecessor when v2 never got a report (it failed before writing one)."""
    from node.work.results import write_outputs

    series_dir = tmp_path / "series"
    paths = [Path(ds.filename) for ds in bleed.sources]
    findings = dataclasses.replace(bleed.findings)  # write_outputs notes its labels file in it
    write_outputs(findings, paths, series_dir / "v1", 1)
    (series_dir / "v2").mkdir()
    written = write_outputs(findings, paths, series_dir / "v3", 3)
    first = pydicom.dcmread(series_dir / "v1" / "sr.dcm")
    third = pydicom.dcmread(written["sr"][0])
    assert "PredecessorDocumentsSequence" not in first
    (study,) = third.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert (instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID) == (
        first.SOPClassUID, first.SOPInstanceUID)
    assert third.SOPInstanceUID != first.SOPInstanceUID
    errors, warnings = _dciodvfy_problems(written["sr"][0])
    assert errors == [] and warnings == []
    other_study = pydicom.dcmread(series_dir / "v1" / "sr.dcm")
    other_study.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="another study"):
        build_outputs(bleed.findings, bleed.sources, series_version=4, previous_sr=other_study,
                      **ALGORITHM)


# --- IHE AI Results (AIR) -------------------------------------------------------

def test_the_seg_copies_the_body_part(bleed):
    assert bleed.seg.BodyPartExamined == "ABDOMEN" == bleed.sources[0].BodyPartExamined


def test_each_algorithm_is_contributing_equipment_with_a_device_uid(built):
    for obj in (built.seg, built.sr):
        stages = [(item.ManufacturerModelName, item.ContributionDescription.split(":")[0])
                  for item in obj.ContributingEquipmentSequence
                  if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
        assert [stage for _, stage in stages] == ["triage", "segmentation", "quantification", "reading",
                                                  "grading", "report"]
        assert ("hu-baseline", "segmentation") in stages
        for item in obj.ContributingEquipmentSequence:
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1":
                assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
                assert item.DeviceSerialNumber.startswith("2.25.")
        assert "99IHE" in [s.CodingSchemeDesignator for s in obj.CodingSchemeIdentificationSequence]
    assert built.seg.get("BodyPartExamined") == built.sources[0].get("BodyPartExamined")
    assert str(built.seg.ContentCreatorName) == "trauma-node^AI-generated"


def test_the_device_uid_changes_with_the_weights(bleed):
    findings = bleed.findings
    stages = [dataclasses.replace(s, weights="checkpoint /models/unet.pt sha256:0123456789abcdef")
              if s.stage == "segmentation" else s for s in findings.provenance.stages]
    other = dataclasses.replace(findings, provenance=dataclasses.replace(findings.provenance, stages=stages))
    before = {i.ContributionDescription.split(":")[0]: i.DeviceSerialNumber
              for i in build_seg(findings, bleed.sources, series_version=1, **ALGORITHM).ContributingEquipmentSequence
              if "DeviceSerialNumber" in i}
    after = {i.ContributionDescription.split(":")[0]: i.DeviceSerialNumber
             for i in build_seg(other, bleed.sources, series_version=1, **ALGORITHM).ContributingEquipmentSequence
             if "DeviceSerialNumber" in i}
    assert before["segmentation"] != after["segmentation"]
    assert before["triage"] == after["triage"]


def test_each_measurement_group_names_the_backend_that_produced_it(bleed):
    items = list(_items(bleed.sr))
    algorithm_names = [i.TextValue for i in items
                       if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"]
    assert algorithm_names and set(algorithm_names) <= {"hu-baseline", "rule-table"}
    assert "trauma-node test" not in algorithm_names


def test_a_contained_vascular_injury_is_its_own_segment_and_group(bleed, tmp_path):
    """When another phase showed the blush kept its size and followed the aorta (label 3)."""
    labels = bleed.findings.labels.copy()
    labels[labels == ACTIVE_EXTRAVASATION] = CONTAINED_VASCULAR_INJURY
    volumes = dict(bleed.findings.volumes_ml, contained_vascular_injury=bleed.findings.volumes_ml[
        "active_extravasation"], active_extravasation=0.0)
    findings = dataclasses.replace(bleed.findings, labels=labels, volumes_ml=volumes)
    outputs = build_outputs(findings, bleed.sources, series_version=1, **ALGORITHM)
    segments = {s.SegmentLabel: s for s in outputs.seg.SegmentSequence}
    assert set(segments) == {"Hemorrhage, non-enhancing", "Contained vascular injury"}
    code = segments["Contained vascular injury"].SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("22036004", "SCT")  # Pseudoaneurysm
    outputs.seg.save_as(tmp_path / "seg.dcm")
    outputs.sr.save_as(tmp_path / "sr.dcm")
    for path in (tmp_path / "seg.dcm", tmp_path / "sr.dcm"):
        errors, warnings = _dciodvfy_problems(path)
        assert errors == [] and warnings == []
    groups = {g.tracking_identifier: g for g in hd.sr.srread(tmp_path / "sr.dcm").content
              .get_volumetric_roi_measurement_groups()}
    (volume,) = groups["Contained vascular injury"].get_measurements(name=codes.SCT.Volume)
    assert volume.value == pytest.approx(volumes["contained_vascular_injury"])


def test_the_seg_and_sr_are_written_and_announced_before_the_rest(bleed, tmp_path):
    """The node queues the SEG for delivery when told, then the SR, while the summary
    images, the PDF and the KOS are still to be built; then all of them are there."""
    from node.work.results import write_outputs

    out = tmp_path / "v1"
    told: list[tuple[list[str], set[str]]] = []

    def written_first(objects: dict[str, list[Path]]) -> None:
        for paths in objects.values():
            assert pydicom.dcmread(paths[0]).StudyInstanceUID == bleed.sr.StudyInstanceUID
        told.append((list(objects), {p.name for p in out.iterdir()}))

    paths = [Path(ds.filename) for ds in bleed.sources]
    written = write_outputs(dataclasses.replace(bleed.findings), paths, out, 1,
                            written_first=written_first)
    assert told == [(["seg"], {"seg.dcm"}), (["sr"], {"seg.dcm", "sr.dcm"})]
    assert list(written) == ["seg", "sr", "sc", "pdf", "kos"]
    assert {p.name for p in out.iterdir()} >= {"sc-01.dcm", "pdf.dcm", "kos.dcm", "findings.json"}


@pytest.mark.parametrize("now, then", [("bleed", "clean"), ("clean", "bleed")])
def test_sr_states_the_comparison_with_the_prior(request, tmp_path, now, then):
    """Both SR forms (TID 1500 with blood, TID 2000 without) carry the interval change as a
    'Comparison to previous studies' text, and stay valid."""
    from pipeline.interval import attach, compare

    current, prior = request.getfixturevalue(now), request.getfixturevalue(then)
    findings = dataclasses.replace(current.findings)  # the fixture's stays as it was
    attach(findings, compare(findings, prior.findings, "1.2.3.4", "20251201"))
    outputs = build_outputs(findings, current.sources, series_version=1, **ALGORITHM)
    path = tmp_path / "sr.dcm"
    outputs.sr.save_as(path)
    (comparison,) = _named(list(_items(hd.sr.srread(path))), "Comparison to previous studies")
    assert "prior CT of 2025-12-01" in comparison.TextValue
    assert f"{findings.volumes_ml['hemorrhage']:.1f} mL now" in comparison.TextValue
    errors, warnings = _dciodvfy_problems(path)
    assert errors == [] and warnings == []
