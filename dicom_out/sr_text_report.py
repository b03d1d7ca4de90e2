"""A text report (TID 2000) where there is nothing to point at: no blood found, or not assessed.

TID 1500 is a measurement report, and viewers draw its measurements from the image
coordinates they hold: OHIF 3.x breaks (route error boundary, blank viewport) on a
measurement group without any. With no blood there is no place to point to, and a
point placed anyway would show the reader a finding that is not there. So such a
series gets a Basic Diagnostic Imaging Report (TID 2000, LOINC 18748-4) that says
the same in words and coded values; viewers show it as text, OHIF among them.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr.templates import DEFAULT_LANGUAGE  # en-US, as in highdicom's TID 1500

from dicom_out import codes, sr_text, uids
from dicom_out.device import Algorithm
from pipeline.findings import Findings

Relationship = hd.sr.RelationshipTypeValues


def text_report(findings: Findings, algorithm: Algorithm) -> hd.sr.ContentSequence:
    """The document content: context, then a Findings and an Impressions section."""
    root = hd.sr.ContainerContentItem(name=codes.DIAGNOSTIC_IMAGING_REPORT, template_id="2000")
    tier = codes.RISK_TIER_VALUES.get(findings.risk_tier)
    if tier is None:
        raise ValueError(f"unknown risk tier {findings.risk_tier!r}")
    found = [hd.sr.TextContentItem(codes.FINDINGS_TEXT, sr_text.report(findings, algorithm),
                                   relationship_type=Relationship.CONTAINS),
             hd.sr.CodeContentItem(codes.RISK_TIER, tier, relationship_type=Relationship.CONTAINS),
             *(hd.sr.TextContentItem(codes.COMPARISON, text, relationship_type=Relationship.CONTAINS)
               for text in sr_text.comparison(findings))]
    if findings.assessment.assessed:  # a measured negative: none, stated as 0 mL
        found.append(hd.sr.NumContentItem(codes.VOLUME, round(findings.volumes_ml.get("hemorrhage", 0.0), 3),
                                          codes.CUBIC_CENTIMETRE, relationship_type=Relationship.CONTAINS))
    impressions = [hd.sr.TextContentItem(name, text, relationship_type=Relationship.CONTAINS)
                   for name, text in ((codes.IMPRESSION, sr_text.impression(findings)),
                                      (codes.RECOMMENDATION, sr_text.recommendation(findings)),
                                      (codes.COMMENT, algorithm.notice()))]
    root.ContentSequence = hd.sr.ContentSequence([
        *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
        *algorithm.observer_context(uids.device_uid(algorithm.name)),
        hd.sr.CodeContentItem(codes.PROCEDURE_REPORTED, codes.CT_PROCEDURE,
                              relationship_type=Relationship.HAS_CONCEPT_MOD),
        _section(codes.FINDINGS_TEXT, found),
        _section(codes.IMPRESSIONS, impressions),
    ])
    return hd.sr.ContentSequence([root], is_root=True)


def _section(name, items) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(name=name, relationship_type=Relationship.CONTAINS)
    section.ContentSequence = hd.sr.ContentSequence(items)
    return section
