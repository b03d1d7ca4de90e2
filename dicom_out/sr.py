"""TID 1500 Measurement Report in a Comprehensive 3D SR, built with highdicom.

Structure (why: OHIF and most PACS viewers only treat an SR as a measurement
report when it is TID 1500 with tracking identifiers and an image library, and
draw a measurement only from the image coordinates it holds: each Volume points
at its finding on the CT. OHIF 3.13 shows no TEXT of a TID 1500, so the
impression, tier and recommendation also reach it by the summary SC series.
With no blood, or a series not assessed, there is nothing to point at: that
report is a TID 2000 text report instead, see sr_text_report.py):

  Imaging Measurement Report (TID 1500)
    observer: device (algorithm name, version); procedure reported
    Image Library: every source image (one IMAGE entry each; the descriptors all
      images share stated once for the group: see image_library.py)
    Imaging Measurements
      one TID 1411 group per SEG segment (non-enhancing hemorrhage, active
        extravasation: they never overlap): tracking id + UID (the segment's),
        referenced segment, finding, finding site, Volume (cm3) with a point
        on the CT (INFERRED FROM, under the NUM)
      one TID 1501 group for the total hemorrhage (the segments' sum), with
        Extravasation present/absent and the risk tier
      one TID 1501 group per peritoneal compartment holding blood (each voxel
        in one: their volumes add up to the total), its site coded
      one TID 1501 group per organ with parenchymal evidence of injury only:
        Traumatic injury at the organ, the blood inside it, AAST grade lower
        bound (blood beside an organ is never coded as its injury)
    Qualitative Evaluations (TID 1500 row 12): TEXT Impression, Recommendation
      (EAST-aligned), Findings (the full report), Comparison to previous studies
      (the interval change against the prior, when one was looked for: Findings.interval),
      Comment (research-use notice)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_out import codes, sr_text, uids
from dicom_out.device import (MANUFACTURER, Algorithm, output_series_number,
                              series_description)
from dicom_out.image_library import fill_image_library, library_header
from dicom_out.segments import Segment, labelled_slices, planned_segments
from dicom_out.source import source_images
from dicom_out.sr_text_report import text_report
from pipeline.findings import Compartment, Findings, OrganFinding
from pipeline.labels import HEMORRHAGE

RelationshipType = hd.sr.RelationshipTypeValues
_CONTENT_SEQUENCE = 0x0040A730
MeasurementGroup = (hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
                    | hd.sr.MeasurementsAndQualitativeEvaluations)


@dataclass(frozen=True)
class _Report:
    """What every measurement group of one report shares."""

    algorithm: Algorithm
    series_uid: str  # of the source series
    series_version: int
    findings: Findings
    sources: dict[str, Dataset]  # source instances by SOP Instance UID

    def point(self, voxel: list[int] | None) -> list[hd.sr.CoordinatesForMeasurement] | None:
        """A 2D point on the source slice where the finding is: viewers (OHIF among them)
        draw and navigate to a measurement only from the image coordinates it holds."""
        if not voxel:
            return None
        k, row, column = voxel
        where = self.findings.series["slices"][k]
        image = self.sources[where["sop_instance_uid"]]
        frame = [int(where["frame"])] if where.get("frame") is not None else None
        return [hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([[column + 0.5, row + 0.5]]),  # the pixel's centre (column, row)
            source_image=hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID,
                                                    referenced_frame_numbers=frame))]

    def tracking(self, label: str, key: str) -> hd.sr.TrackingIdentifier:
        return hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(self.series_uid, self.series_version, key), identifier=label)


def build_sr(findings: Findings, source_datasets: Sequence[Dataset], seg: Dataset | None, *,
             series_version: int, algorithm_name: str, algorithm_version: str,
             previous_sr: Dataset | None = None, sop_instance_uid: str | None = None,
             instance_number: int = 1) -> Dataset:
    """The Comprehensive 3D SR of the findings; seg is the SEG it describes (from build_seg).

    Without a SEG (seg=None) the segment groups become TID 1501 groups with the
    same content and no referenced segment. previous_sr, the report of an earlier
    version of the series, goes in PredecessorDocumentsSequence, so that a viewer
    can tell the newer report supersedes it. sop_instance_uid and instance_number: those
    of a report issued again for the same series version (the amendment with the prior's
    comparison, node.prior.amendment; its previous_sr is the version's first SR); by
    default the version's own. Returns a plain pydicom Dataset.
    """
    algorithm = Algorithm.of(findings, algorithm_name, algorithm_version)
    source = source_images(findings, source_datasets)
    report = _Report(algorithm, findings.series["series_instance_uid"], series_version, findings,
                     {str(ds.SOPInstanceUID): ds for ds in source.datasets})
    segments = planned_segments(findings)
    if seg is not None and len(seg.SegmentSequence) != len(segments):
        raise ValueError(f"the SEG has {len(seg.SegmentSequence)} segment(s), these findings "
                         f"{len(segments)}: was it built from other findings?")
    if previous_sr is not None and previous_sr.StudyInstanceUID != findings.series["study_instance_uid"]:
        raise ValueError("the previous SR belongs to another study")
    measured = findings.assessment.assessed and findings.volumes_ml.get("hemorrhage", 0.0) > 0
    if measured:
        groups: list[MeasurementGroup] = [_segment_group(s, report, seg) for s in segments]
        groups.append(_total_group(findings, segments, report))
        groups += [_compartment_group(c, report) for c in findings.compartments if not c.parenchymal]
        groups += [_organ_group(o, report) for o in findings.organs.values() if o.injured]
        content = hd.sr.MeasurementReport(
            observation_context=algorithm.observer_context(uids.device_uid(algorithm.name)),
            procedure_reported=codes.CT_PROCEDURE,
            imaging_measurements=groups,
            referenced_images=[library_header(source.datasets[0])],  # the rest is added below, fast
        )
        content[0].ContentSequence.append(_text_evaluations(findings, algorithm))
    else:  # nothing to point at: no blood, or not assessed (see sr_text_report)
        content = text_report(findings, algorithm)
    # Comprehensive3DSR deep-copies and re-parses the content tree it is given, for a cache
    # _plain drops: it gets the root alone, and the tree is put back as it is (every item
    # references an instance given as evidence: the source images or the SEG).
    root = content[0]
    tree = root[_CONTENT_SEQUENCE]
    root.add(DataElement(_CONTENT_SEQUENCE, "SQ", []))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source.datasets, *([seg] if seg is not None else [])],
        content=root,
        series_instance_uid=uids.output_uid(report.series_uid, series_version, uids.SR_SERIES),
        series_number=output_series_number("SR", series_version),
        sop_instance_uid=sop_instance_uid or uids.output_uid(report.series_uid, series_version,
                                                             uids.SR_INSTANCE),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY and UNVERIFIED: no person has signed it
        is_verified=False,
        series_description=series_description("SR", series_version),
        coding_schemes=[codes.private_coding_scheme(), codes.ihe_coding_scheme()],
        previous_versions=[previous_sr] if previous_sr is not None else None,
        contributing_equipment=algorithm.contributing_equipment(),
    )
    plain = _plain(sr)
    plain.add(tree)
    if measured:
        fill_image_library(plain, [library_header(ds) for ds in source.datasets])
    return plain


def _plain(sr: hd.sr.Comprehensive3DSR) -> Dataset:
    """A plain pydicom Dataset: the highdicom object's parsed content cache would
    not show the library filled in afterwards (use hd.sr.srread to get one back)."""
    plain = Dataset({element.tag: element for element in sr})
    plain.file_meta = sr.file_meta
    plain.preamble = sr.preamble  # so that a plain save_as() writes a DICOM file (DICM prefix)
    return plain


def _volume(name: Code, millilitres: float,
            point: list[hd.sr.CoordinatesForMeasurement] | None = None) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(float(millilitres), 3),
                             unit=codes.CUBIC_CENTIMETRE, referenced_coordinates=point)


def _present(flag: bool) -> Code:
    return codes.PRESENT if flag else codes.ABSENT


def _segment_group(segment: Segment, report: _Report, seg: Dataset | None) -> MeasurementGroup:
    finding = segment.finding
    common = dict(
        tracking_identifier=report.tracking(finding.label, finding.key),
        finding_type=finding.property_type,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=report.algorithm.sr_identification(),
        finding_sites=[hd.sr.FindingSite(codes.PERITONEAL_CAVITY)],
    )
    point = report.point(_segment_voxel(segment, report.findings))
    if seg is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            measurements=[_volume(codes.VOLUME, segment.volume_ml, point)], **common)
    # Built directly: ReferencedSegment.from_segmentation fails on one-segment SEGs
    # (see shared/REFERENCES.md).
    referenced = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment.number,
        source_series=hd.sr.SourceSeriesForSegmentation(report.series_uid))
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        referenced_segment=referenced, measurements=[_volume(codes.VOLUME, segment.volume_ml)], **common)
    if point:  # highdicom refuses coordinates in a TID 1411 group: added to its NUM, as TID 300 has them
        num = next(item for item in group[0].ContentSequence if item.ValueType == "NUM")
        num.ContentSequence = hd.sr.ContentSequence([*getattr(num, "ContentSequence", []), *point])
    return group


def _largest_voxel(found: Sequence[Compartment]) -> list[int] | None:
    """Where the most blood of these compartments is."""
    return next((c.voxel for c in sorted(found, key=lambda c: -c.volume_ml) if c.voxel), None)


def _segment_voxel(segment: Segment, findings: Findings) -> list[int] | None:
    """A voxel of the segment: its largest focus (blush kinds); for the non-enhancing blood, on
    the slice that holds most of it (the total points at the largest compartment: two labels
    at one point would hide each other's numbers in the viewer)."""
    if segment.finding.key == "non_enhancing_hemorrhage":
        labels = findings.labels
        labelled = np.flatnonzero(labelled_slices(labels)) if labels is not None else []
        per_slice = [np.count_nonzero(labels[k] == HEMORRHAGE) for k in labelled]
        if not any(per_slice):
            return _largest_voxel(findings.compartments)
        k = int(labelled[int(np.argmax(per_slice))])
        rows, columns = np.nonzero(labels[k] == HEMORRHAGE)
        middle = np.argmin((rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2)
        return [k, int(rows[middle]), int(columns[middle])]
    contained = segment.finding.key == "contained_vascular_injury"
    kinds = ("contained_vascular_injury",) if contained else ("undetermined", "active_bleeding")
    foci = [f for f in findings.contrast_foci if f.kind in kinds and f.voxel]
    return max(foci, key=lambda f: f.volume_ml).voxel if foci else None


def _total_group(findings: Findings, segments: list[Segment],
                 report: _Report) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """All blood (the segments' sum), with blush present/absent and the risk tier, stated once."""
    tier = codes.RISK_TIER_VALUES.get(findings.risk_tier)
    if tier is None:
        raise ValueError(f"unknown risk tier {findings.risk_tier!r}")
    blush = any(s.is_extravasation for s in segments)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=report.tracking("Hemorrhage, total", "hemorrhage"),
        finding_type=codes.HEMORRHAGE,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=report.algorithm.sr_identification(),
        finding_sites=[hd.sr.FindingSite(codes.PERITONEAL_CAVITY)],
        measurements=[_volume(codes.VOLUME, findings.volumes_ml.get("hemorrhage", 0.0),
                              report.point(_largest_voxel(findings.compartments)))],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.EXTRAVASATION, _present(blush)),
                                 hd.sr.QualitativeEvaluation(codes.RISK_TIER, tier)])


def _compartment_group(compartment: Compartment,
                       report: _Report) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The blood of one compartment: where it lies, not which organ bled."""
    name, site = codes.compartment_site(compartment.name)
    evaluations = [hd.sr.QualitativeEvaluation(codes.EXTRAVASATION,
                                               _present(compartment.active_extravasation_ml > 0))]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=report.tracking(f"Hemorrhage, {name}", f"compartment/{compartment.name}"),
        finding_type=codes.HEMORRHAGE,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=report.algorithm.sr_identification(),
        finding_sites=[site],
        measurements=[_volume(codes.VOLUME, compartment.volume_ml, report.point(compartment.voxel))],
        qualitative_evaluations=evaluations)


def _organ_group(organ: OrganFinding,
                 report: _Report) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """An organ with parenchymal evidence of injury: the blood inside it, the grade it supports."""
    name, structure, laterality = codes.organ_site(organ.organ)
    inside = [c for c in report.findings.compartments if c.parenchymal and c.organ == organ.organ]
    measurements = [hd.sr.Measurement(
        name=codes.VOLUME, value=round(float(organ.intraparenchymal_blood_ml), 3),
        unit=codes.CUBIC_CENTIMETRE, referenced_coordinates=report.point(_largest_voxel(inside)),
        finding_sites=[hd.sr.FindingSite(structure, laterality=laterality,
                                         topographical_modifier=codes.INTRAPARENCHYMAL)])]
    if organ.aast_grade is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.AAST_GRADE_LOWER_BOUND, value=int(organ.aast_grade), unit=codes.GRADE_UNIT))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=report.tracking(f"{name} injury", f"organ/{organ.organ}"),
        finding_type=codes.TRAUMATIC_INJURY,
        algorithm_id=report.algorithm.sr_identification("grading"),
        finding_sites=[hd.sr.FindingSite(structure, laterality=laterality)],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            codes.EXTRAVASATION, _present(organ.blush_inside))],
    )


def _text_evaluations(findings: Findings, algorithm: Algorithm) -> hd.sr.ContainerContentItem:
    """TID 1500's own Qualitative Evaluations container, holding the texts."""
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                           relationship_type=RelationshipType.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name, text, relationship_type=RelationshipType.CONTAINS)
        for name, text in ((codes.IMPRESSION, sr_text.impression(findings)),
                           (codes.RECOMMENDATION, sr_text.recommendation(findings)),
                           (codes.FINDINGS_TEXT, sr_text.report(findings, algorithm)),
                           *((codes.COMPARISON, text) for text in sr_text.comparison(findings)),
                           (codes.COMMENT, algorithm.notice()))])
    return container
