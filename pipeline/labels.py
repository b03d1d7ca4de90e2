"""Label values of the label volume, shared by every segmentation backend."""

BACKGROUND = 0
HEMORRHAGE = 1  # blood without contrast: hemoperitoneum, hematoma, clot
ACTIVE_EXTRAVASATION = 2  # contrast blush; also counted as hemorrhage

LABEL_NAMES = {HEMORRHAGE: "hemorrhage", ACTIVE_EXTRAVASATION: "active_extravasation"}
