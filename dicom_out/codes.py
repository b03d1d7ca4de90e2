"""The coded concepts of the SEG and the SR, in one place.

Standard codes (SNOMED CT, DCM, LOINC, UMLS, UCUM) wherever one exists; the few
concepts with no standard code live in a private coding scheme that each object
declares in its CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import FindingSite
from pydicom.sr.coding import Code

# --- anatomy (SNOMED CT) -----------------------------------------------------
PERITONEAL_CAVITY = Code("83670000", "SCT", "Peritoneal cavity")
LIVER = Code("10200004", "SCT", "Liver")
SPLEEN = Code("78961009", "SCT", "Spleen")
KIDNEY = Code("64033007", "SCT", "Kidney")
INTESTINE = Code("113276009", "SCT", "Intestine")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")

# Organ keys of pipeline OrganFinding -> (name for people, structure, laterality).
ORGAN_SITES: dict[str, tuple[str, Code, Code | None]] = {
    "liver": ("Liver", LIVER, None),
    "spleen": ("Spleen", SPLEEN, None),
    "kidney_right": ("Right kidney", KIDNEY, RIGHT),
    "kidney_left": ("Left kidney", KIDNEY, LEFT),
    "bowel": ("Bowel", INTESTINE, None),
}


# Compartments of pipeline.compartments -> (name for people, finding site). Standard
# SNOMED CT sites: the quadrant a perihepatic or perisplenic space lies in, the
# retroperitoneum beside a kidney, the peritoneal cavity with a modifier.
RIGHT_UPPER_QUADRANT = Code("50519007", "SCT", "Right upper quadrant of abdomen")
LEFT_UPPER_QUADRANT = Code("86367003", "SCT", "Left upper quadrant of abdomen")
RETROPERITONEUM = Code("82849001", "SCT", "Retroperitoneal space")
PELVIC_CAVITY = Code("21844003", "SCT", "Pelvic cavity structure")
LATERAL = Code("49370004", "SCT", "Lateral")
CENTRAL = Code("26216008", "SCT", "Central")
INTRAPARENCHYMAL = Code("91772007", "SCT", "Parenchyma")  # a blood volume's site within an organ


def compartment_site(name: str) -> tuple[str, FindingSite]:
    sites = {
        "perihepatic": ("perihepatic space / Morison's pouch", FindingSite(RIGHT_UPPER_QUADRANT)),
        "perisplenic": ("perisplenic space", FindingSite(LEFT_UPPER_QUADRANT)),
        "perirenal_right": ("right perirenal space", FindingSite(RETROPERITONEUM, laterality=RIGHT)),
        "perirenal_left": ("left perirenal space", FindingSite(RETROPERITONEUM, laterality=LEFT)),
        "right_paracolic": ("right paracolic gutter", FindingSite(
            PERITONEAL_CAVITY, laterality=RIGHT, topographical_modifier=LATERAL)),
        "left_paracolic": ("left paracolic gutter", FindingSite(
            PERITONEAL_CAVITY, laterality=LEFT, topographical_modifier=LATERAL)),
        "central": ("central (mesenteric) space", FindingSite(PERITONEAL_CAVITY, topographical_modifier=CENTRAL)),
        "pelvic": ("pelvis", FindingSite(PELVIC_CAVITY)),
    }
    return sites.get(name, (name.replace("_", " "), FindingSite(PERITONEAL_CAVITY)))


def organ_site(organ: str) -> tuple[str, Code, Code | None]:
    """An organ the table does not know yet is reported in the peritoneal cavity."""
    return ORGAN_SITES.get(organ, (organ.replace("_", " ").capitalize(), PERITONEAL_CAVITY, None))

# --- what was found ----------------------------------------------------------
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
HEMORRHAGE = Code("50960005", "SCT", "Hemorrhage")  # in CID 7151 (segmentation property types)
EXTRAVASATION = Code("111428", "DCM", "Extravasation")  # no SNOMED code in CID 7151 for a blush
TRAUMATIC_INJURY = Code("417746004", "SCT", "Traumatic injury")
PSEUDOANEURYSM = Code("22036004", "SCT", "Pseudoaneurysm")  # a contained vascular injury
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")

# --- measurements ------------------------------------------------------------
VOLUME = Code("118565006", "SCT", "Volume")
CUBIC_CENTIMETRE = Code("cm3", "UCUM", "cubic centimeter")  # = mL
GRADE_UNIT = Code("{grade}", "UCUM", "grade")  # a UCUM annotation: a dimensionless ordinal

# --- the report --------------------------------------------------------------
# LOINC/RSNA Radiology Playbook: the trauma CT of the abdomen and pelvis.
CT_PROCEDURE = Code("36813-4", "LN", "CT Abdomen and Pelvis W contrast IV")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
IMPRESSION = Code("121073", "DCM", "Impression")
IMPRESSIONS = Code("121072", "DCM", "Impressions")  # TID 2000 section
PROCEDURE_REPORTED = Code("121058", "DCM", "Procedure reported")
# TID 2000 Basic Diagnostic Imaging Report: the text report of a series with nothing to measure.
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic imaging report")
RECOMMENDATION = Code("121075", "DCM", "Recommendation")
FINDINGS_TEXT = Code("121070", "DCM", "Findings")
COMMENT = Code("121106", "DCM", "Comment")
# The interval change against the patient's prior study (Findings.interval), as TEXT.
COMPARISON = Code("111424", "DCM", "Comparison to previous studies")

# Risk tier values of Findings.risk_tier (SNOMED CT qualifier values).
RISK_TIER_VALUES: dict[str, Code] = {
    "none": Code("260413007", "SCT", "None"),
    "low": Code("62482003", "SCT", "Low"),
    "moderate": Code("6736007", "SCT", "Moderate"),
    "high": Code("75540009", "SCT", "High"),
    # A series the pipeline could not assess (pipeline.plausibility): never a tier.
    "not_assessed": Code("373121007", "SCT", "Not Evaluated"),
}

# --- private concepts (no standard code found) -------------------------------
PRIVATE_SCHEME = "99TRAUMANODE"
RISK_TIER = Code("RISK-TIER", PRIVATE_SCHEME, "Hemorrhage risk tier")
AAST_GRADE_LOWER_BOUND = Code("AAST-GRADE-MIN", PRIVATE_SCHEME,
                              "AAST injury grade estimate, lower bound")


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """Declares the private scheme, so that a reader can tell where its codes come from."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="trauma-node private concepts",
        responsible_organization="trauma-node project (research use only)")


def ihe_coding_scheme() -> CodingSchemeIdentificationItem:
    """IHE's scheme of the AI Results profile (Processing Algorithm, Newcode1)."""
    return CodingSchemeIdentificationItem(designator="99IHE", name="IHE Radiology Technical Framework",
                                          responsible_organization="IHE")
