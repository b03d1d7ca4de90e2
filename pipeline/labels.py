"""Label values of the label volume, shared by every segmentation backend."""

BACKGROUND = 0
HEMORRHAGE = 1  # blood without contrast: hemoperitoneum, hematoma, clot
ACTIVE_EXTRAVASATION = 2  # contrast blush; also counted in the total hemorrhage
# A contrast focus that kept its size and followed the vessels across phases
# (pseudoaneurysm): set only when another phase of the study was compared.
CONTAINED_VASCULAR_INJURY = 3

# Every voxel has one value: the two findings never overlap, and the total
# hemorrhage ("hemorrhage" in Findings.volumes_ml) is their sum.
LABEL_NAMES = {HEMORRHAGE: "non_enhancing_hemorrhage", ACTIVE_EXTRAVASATION: "active_extravasation",
               CONTAINED_VASCULAR_INJURY: "contained_vascular_injury"}
