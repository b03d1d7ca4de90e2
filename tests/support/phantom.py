"""Synthetic abdominal CT phantom series with real geometry and known truth.

The phantom is laid out in patient coordinates (LPS, millimetres), so the same
anatomy appears whatever the pixel or slice spacing: a body ellipse with a
subcutaneous fat ring and a muscular wall, intra-abdominal fat, liver, spleen,
kidneys, aorta, IVC, spine and air-filled bowel, in a portal-venous phase.
Blood collections (hemoperitoneum, 40-55 HU) and an optional contrast blush
(~250 HU, inside the perisplenic collection) are painted with known voxel
counts, so tests can compare a pipeline's volumes with the truth. Harder
layouts (bench/fidelity.py) put blood against the abdominal wall with no fat
plane, or pooled in the fat against a kidney or bowel; the body habitus,
the blood's HU and partial volume across thick slices can be varied too.

A named contrast phase (arterial, portal-venous, delayed) sets the HU of the
aorta, veins, liver, spleen and kidneys, and draws what tells the phases apart
and what a blush rule must not take for extravasation: the portal and splenic
veins, the renal medulla, collecting systems, ureters and bladder (dense with
excreted contrast on the delayed phase). The blush can sit in or beside the
spleen, liver or a kidney, at any HU; positive oral contrast can fill the
bowel, and calcified granulomas can lie in the spleen (traps, not blood).

HU values follow common abdominal CT figures (see ../shared/REFERENCES.md):
unclotted blood 30-45 HU, clotted blood 45-70 HU, active extravasation close to
the aorta's enhancement (>100 HU), simple fluid 0-20 HU.
"""

from __future__ import annotations

import datetime
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

# Labels in the truth volume.
BACKGROUND, BLOOD, BLUSH = 0, 1, 2

# HU of the tissues (portal-venous phase).
HU_AIR = -1000
HU_FAT = -100
HU_MUSCLE = 50
HU_LIVER = 110
HU_SPLEEN = 120
HU_KIDNEY = 170
HU_AORTA = 190
HU_IVC = 150
HU_BONE = 700
HU_BOWEL_GAS = -900
HU_BOWEL_WALL = 70
HU_BLOOD = 48
HU_BLUSH = 250
HU_URINE = 10
HU_CALCIFICATION = 800  # calcified granulomas are far denser than any contrast blush


@dataclass(frozen=True)
class Phase:
    """HU of the enhancing structures in one contrast phase; None: not drawn."""

    aorta: float
    ivc: float
    portal_vein: float | None  # with the splenic vein
    liver: float
    spleen: float
    kidney_cortex: float
    kidney_medulla: float
    collecting_system: float | None  # renal pelvis and ureters (with the bladder)
    bladder_contrast: float | None = None  # a dependent layer of excreted contrast
    ivc_infrarenal: float | None = None  # below the renal veins (None: as `ivc`)


# Typical values on the enhancement curves of a 120 kVp trauma protocol (Bae,
# Radiology 2010;256:32-61: aorta and liver against time; Yuh & Cohan, AJR
# 1999;173:747-55: corticomedullary, nephrographic and excretory renal phases).
PHASES = {
    # Late arterial (~35 s): a dense aorta, the portal vein filling, the liver
    # barely enhanced, the renal cortex far brighter than the medulla; the IVC
    # unopacified below the renal veins (the legs' blood has not returned) and
    # mixed with the renal veins' early return above them: both in the liver's
    # HU window, so that the organ finder must not follow the IVC.
    "arterial": Phase(aorta=300, ivc=120, portal_vein=140, liver=85, spleen=130, kidney_cortex=210,
                      kidney_medulla=90, collecting_system=HU_URINE, ivc_infrarenal=90),
    # Portal-venous (~70 s): portal vein like the aorta, liver and spleen enhanced, kidneys homogeneous.
    "portal_venous": Phase(aorta=180, ivc=150, portal_vein=180, liver=110, spleen=120, kidney_cortex=170,
                           kidney_medulla=160, collecting_system=HU_URINE),
    # Delayed / excretory (~5 min): vessels and organs washing out, excreted
    # contrast in the renal pelvis, ureters and the dependent bladder.
    "delayed": Phase(aorta=155, ivc=140, portal_vein=155, liver=95, spleen=95, kidney_cortex=155,
                     kidney_medulla=160, collecting_system=350, bladder_contrast=300),
}
# The phantom as it always was (phase None): portal-venous HU, homogeneous
# kidneys, no portal vein or urinary tract drawn.
ORIGINAL = Phase(aorta=HU_AORTA, ivc=HU_IVC, portal_vein=None, liver=HU_LIVER, spleen=HU_SPLEEN,
                 kidney_cortex=HU_KIDNEY, kidney_medulla=HU_KIDNEY, collecting_system=None)


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in patient coordinates (mm)."""

    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]

    def cross_section(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray | None:
        """Boolean mask of the ellipsoid on the plane at height z, or None."""
        cx, cy, cz = self.centre
        ax, ay, az = self.semi_axes
        t = 1.0 - ((z - cz) / az) ** 2
        if t <= 0:
            return None
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= t


@dataclass(frozen=True)
class Tube:
    """A vessel or ureter: the points within radius of a straight segment (mm)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    def cross_section(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray | None:
        a, b = np.asarray(self.start), np.asarray(self.end)
        if not min(a[2], b[2]) - self.radius <= z <= max(a[2], b[2]) + self.radius:
            return None
        d = b - a
        t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d), 0.0, 1.0)
        return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2 \
            <= self.radius ** 2


# Anatomy, z up (cranial). x positive = patient left, y positive = posterior.
LIVER = Ellipsoid((-70.0, 0.0, 70.0), (65.0, 75.0, 75.0))
SPLEEN = Ellipsoid((85.0, 45.0, 80.0), (28.0, 45.0, 50.0))
KIDNEYS = (Ellipsoid((-65.0, 65.0, 20.0), (25.0, 22.0, 55.0)),
           Ellipsoid((65.0, 65.0, 25.0), (25.0, 22.0, 55.0)))
RENAL_VEINS_Z = 20.0  # where the renal veins join the IVC (the kidneys' hila)
MEDULLA_SCALE = 0.6  # the renal medulla: the kidney's ellipsoid scaled about its centre
COLLECTING = (Ellipsoid((-47.0, 62.0, 15.0), (8.0, 6.0, 14.0)), Ellipsoid((47.0, 62.0, 20.0), (8.0, 6.0, 14.0)))
BLADDER = Ellipsoid((0.0, -25.0, -128.0), (35.0, 28.0, 24.0))  # lies where the pelvic collection would
URETERS = (Tube((-45.0, 62.0, 5.0), (-12.0, -10.0, -112.0), 2.5), Tube((45.0, 62.0, 10.0), (12.0, -10.0, -112.0), 2.5))
# From the confluence behind the pancreas to the liver hilum and on into the
# liver; to the splenic hilum.
PORTAL_VEIN = Tube((0.0, 10.0, 40.0), (-70.0, 5.0, 85.0), 7.0)
SPLENIC_VEIN = Tube((0.0, 10.0, 40.0), (65.0, 30.0, 70.0), 5.0)
BOWEL_LOOPS = tuple(Ellipsoid((x, y, z), (18.0, 18.0, 40.0))
                    for x, y, z in ((-40.0, -60.0, -40.0), (30.0, -50.0, -30.0),
                                    (0.0, -80.0, -90.0), (60.0, -20.0, -80.0)))

# Blood collections: the perisplenic one lies beside the spleen, the
# perihepatic one in Morison's pouch, the pelvic one low in the midline.
PERISPLENIC = Ellipsoid((118.0, 20.0, 70.0), (14.0, 30.0, 35.0))
PERIHEPATIC = Ellipsoid((-40.0, 60.0, 15.0), (14.0, 16.0, 25.0))
PELVIC = Ellipsoid((0.0, -10.0, -120.0), (40.0, 30.0, 22.0))
BLUSH_SITE = Ellipsoid((116.0, 18.0, 72.0), (5.0, 5.0, 6.0))
# Where a blush can be (about 0.6-1.6 mL at blush_scale 1): beside an organ
# inside the collection of the layout named in the comment, or in the organ.
BLUSH_SITES = {
    "perisplenic": BLUSH_SITE,  # in PERISPLENIC (layouts large, perisplenic, splenic_injury)
    "intrasplenic": Ellipsoid((95.0, 30.0, 60.0), (6.0, 6.0, 7.0)),
    "perihepatic": Ellipsoid((-133.0, 0.0, 55.0), (5.0, 5.0, 6.0)),  # in WALL_RIGHT (wall_right)
    "intrahepatic": Ellipsoid((-85.0, -15.0, 75.0), (7.0, 7.0, 8.0)),
    "perirenal": Ellipsoid((-95.0, 66.0, -10.0), (5.0, 5.0, 6.0)),  # in PERIRENAL (perirenal)
    "intrarenal": Ellipsoid((-65.0, 65.0, -15.0), (6.0, 6.0, 7.0)),  # the right kidney's lower pole
}
GRANULOMAS = (Ellipsoid((95.0, 25.0, 100.0), (3.0, 3.0, 3.0)), Ellipsoid((75.0, 60.0, 70.0), (2.5, 2.5, 2.5)))


@dataclass(frozen=True)
class WallLining:
    """Blood lining the inside of the abdominal wall on one side, no fat plane
    between them: a crescent up to `thickness` mm deep, tapering in y and z.
    It displaces whatever lies there (fat, the edge of the liver or spleen)."""

    side: int  # -1: patient right (x < 0), +1: left
    centre: tuple[float, float]  # (y, z) of the thickest part
    half_extent: tuple[float, float]  # (y, z)
    thickness: float

    def mask(self, xs: np.ndarray, ys: np.ndarray, z: float, cavity: np.ndarray,
             semi_axes: tuple[float, float]) -> np.ndarray | None:
        (yc, zc), (hy, hz) = self.centre, self.half_extent
        taper = 1.0 - ((ys - yc) / hy) ** 2 - ((z - zc) / hz) ** 2
        if taper.max() <= 0:
            return None
        t = self.thickness * np.sqrt(np.clip(taper, 0.0, None))
        a, b = semi_axes
        deeper = (xs / np.maximum(a - t, 1.0)) ** 2 + (ys / np.maximum(b - t, 1.0)) ** 2 <= 1.0
        return cavity & ~deeper & (t > 0) & (np.sign(xs) == self.side)


@dataclass(frozen=True)
class Pooled:
    """Blood pooled in the intra-abdominal fat within an ellipsoid: it touches
    the organs and wall there without displacing them (no parenchymal injury)."""

    shape: Ellipsoid


Collection = Ellipsoid | WallLining | Pooled

# Against the right lateral wall beside the liver, and the left one beside the spleen.
WALL_RIGHT = WallLining(-1, (0.0, 55.0), (60.0, 45.0), 18.0)
WALL_LEFT = WallLining(+1, (25.0, 75.0), (55.0, 40.0), 18.0)
# Lateral to the right kidney below the liver; around a bowel loop.
PERIRENAL = Pooled(Ellipsoid((-85.0, 65.0, -12.0), (30.0, 28.0, 22.0)))
PERIBOWEL = Pooled(Ellipsoid((30.0, -50.0, -30.0), (35.0, 35.0, 30.0)))

# Deep in the spleen (about 8 mL, 28 mm across): parenchymal evidence of injury.
SPLENIC_HEMATOMA = Ellipsoid((85.0, 50.0, 85.0), (10.0, 14.0, 14.0))

BLOOD_LAYOUTS: dict[str, tuple[Collection, ...]] = {
    "none": (),
    "small": (PERIHEPATIC,),
    "large": (PERISPLENIC, PERIHEPATIC, PELVIC),
    "wall_right": (WALL_RIGHT,),
    "wall_left": (WALL_LEFT,),
    "wall_both": (WALL_RIGHT, WALL_LEFT),
    "perirenal": (PERIRENAL,),
    "peribowel": (PERIBOWEL,),
    # A splenic injury: a hematoma inside the parenchyma, blood around it and beyond.
    "splenic_injury": (SPLENIC_HEMATOMA, PERISPLENIC, PERIHEPATIC, PELVIC),
    "perisplenic": (PERISPLENIC,),
}


@dataclass(frozen=True)
class Habitus:
    """Body build: the cavity inside the muscular wall (semi-axes, mm), the
    wall's thickness and the subcutaneous fat's; the organs stay where they are.
    fill_hu is what fills the cavity between the organs: fat, or in a thin
    patient bowel and mesentery, with fat left only round the mesenteric root
    (fat_core: semi-axes of a central ellipse)."""

    cavity: tuple[float, float]
    wall_mm: float
    subcutaneous_mm: float
    fill_hu: float = HU_FAT
    fat_core: tuple[float, float] | None = None

    def ellipses(self) -> tuple[tuple[float, float], ...]:
        """Semi-axes of the skin, the wall's outer surface and the cavity."""
        (a, b), w, s = self.cavity, self.wall_mm, self.subcutaneous_mm
        return (a + w + s, b + w + s), (a + w, b + w), (a, b)


HABITUS = {
    "average": Habitus((143.0, 98.0), 12.0, 15.0),
    # Thin: 4 mm of subcutaneous fat, the liver against the lateral wall, and
    # no fat plane inside the wall (fluid-filled bowel, 10 HU) except centrally.
    "thin": Habitus((137.0, 98.0), 8.0, 4.0, fill_hu=10.0, fat_core=(55.0, 40.0)),
    "obese": Habitus((150.0, 104.0), 14.0, 38.0),  # needs a field of view over 400 mm
}


@dataclass
class PhantomSpec:
    """What series to make. Defaults: a 120-slice portal-venous abdomen."""

    slices: int = 120
    rows: int = 512
    cols: int = 512
    pixel_spacing: tuple[float, float] = (0.78125, 0.78125)  # (row, column) mm
    slice_spacing: float = 2.5
    slice_thickness: float | None = None  # defaults to slice_spacing
    z_top: float | None = None  # z of the most cranial slice; centred by default
    blood: str = "none"  # a key of BLOOD_LAYOUTS: none | small | large | wall_right | ...
    blush: bool = False
    blush_site: str = "perisplenic"  # a key of BLUSH_SITES
    blush_hu: float = HU_BLUSH
    blush_scale: float = 1.0  # the site's semi-axes scaled (volume by its cube)
    # Contrast phase, a key of PHASES (None: the original portal-venous phantom);
    # aorta_hu overrides the phase's aorta.
    phase: str | None = None
    aorta_hu: float | None = None
    # Positive oral contrast in the bowel lumen (HU; None: gas): half the loops
    # with a gas cap above an air-fluid level, half filled.
    oral_contrast_hu: float | None = None
    granuloma: bool = False  # calcified granulomas in the spleen (GRANULOMAS)
    noise_hu: float = 8.0
    blood_hu: float = HU_BLOOD
    habitus: str = "average"  # average | thin | obese (HABITUS)
    # Planes averaged across each slice's thickness (partial volume); 1: the centre plane alone.
    slab_samples: int = 1
    seed: int = 0
    # File and instance order: "ascending" (feet->head), "descending"
    # (head->feet, as most scanners), "shuffled" (random InstanceNumber/file names).
    order: str = "descending"
    transfer_syntax: str = ExplicitVRLittleEndian
    images_in_acquisition: bool = True
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    modality: str = "CT"
    series_description: str = "ABD/PELVIS 2.5mm PV"
    image_orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    # Vary RescaleIntercept between slices to prove per-slice rescaling.
    vary_rescale: bool = False


@dataclass
class PhantomTruth:
    """What was written and what is in it."""

    spec: PhantomSpec
    paths: list[Path]
    sop_instance_uids: list[str]
    z_positions: list[float]  # of each slice, cranial first
    voxel_counts: dict[str, int]
    voxel_volume_mm3: float

    @property
    def volumes_ml(self) -> dict[str, float]:
        return {name: count * self.voxel_volume_mm3 / 1000.0
                for name, count in self.voxel_counts.items()}


def _z_positions(spec: PhantomSpec) -> list[float]:
    top = spec.z_top if spec.z_top is not None else (spec.slices - 1) * spec.slice_spacing / 2
    return [top - k * spec.slice_spacing for k in range(spec.slices)]


def _grid(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray, float, float]:
    dy, dx = spec.pixel_spacing
    x0 = -(spec.cols - 1) * dx / 2
    y0 = -(spec.rows - 1) * dy / 2
    xs = (x0 + dx * np.arange(spec.cols, dtype=np.float32))[None, :]
    ys = (y0 + dy * np.arange(spec.rows, dtype=np.float32))[:, None]
    return xs, ys, x0, y0


def render_slice(spec: PhantomSpec, z: float, rng: np.random.Generator,
                 grid: tuple[np.ndarray, np.ndarray, float, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """HU (int16) and truth labels (uint8) of the axial plane at height z.

    With slab_samples > 1 the HU is the mean over planes across the slice
    thickness (partial volume); the labels are those of the centre plane.
    """
    grid = grid if grid is not None else _grid(spec)
    hu, labels = _render_plane(spec, z, grid)
    if spec.slab_samples > 1:
        thickness = spec.slice_thickness or spec.slice_spacing
        offsets = (np.arange(spec.slab_samples) + 0.5) / spec.slab_samples - 0.5
        hu = np.mean([_render_plane(spec, z + o * thickness, grid)[0] for o in offsets], axis=0)
    if spec.noise_hu:
        hu += rng.normal(0.0, spec.noise_hu, hu.shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels


def _render_plane(spec: PhantomSpec, z: float, grid: tuple[np.ndarray, np.ndarray, float, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and labels of one plane."""
    xs, ys, _, _ = grid
    hu = np.full((spec.rows, spec.cols), HU_AIR, dtype=np.float32)
    labels = np.zeros((spec.rows, spec.cols), dtype=np.uint8)

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1.0

    habitus = HABITUS[spec.habitus]
    skin, muscle, cavity_axes = habitus.ellipses()
    body = ellipse(0, 0, *skin)
    cavity = ellipse(0, 0, *cavity_axes)
    hu[body] = HU_FAT
    hu[ellipse(0, 0, *muscle)] = HU_MUSCLE  # abdominal wall muscles
    hu[cavity] = habitus.fill_hu  # intra-abdominal fat (or bowel and mesentery)
    if habitus.fat_core:
        hu[ellipse(0, 0, *habitus.fat_core)] = HU_FAT
    phase = PHASES[spec.phase] if spec.phase else ORIGINAL

    def paint(shapes, value: float) -> None:
        for shape in shapes:
            m = shape.cross_section(xs, ys, z)
            if m is not None:
                hu[m] = value

    hu[ellipse(0, 80, 20, 18)] = HU_BONE  # vertebral body
    hu[ellipse(15, 52, 11, 11)] = spec.aorta_hu if spec.aorta_hu is not None else phase.aorta
    below_renal_veins = z < RENAL_VEINS_Z and phase.ivc_infrarenal is not None
    hu[ellipse(-20, 52, 12, 10)] = phase.ivc_infrarenal if below_renal_veins else phase.ivc
    paint((LIVER,), phase.liver)
    paint((SPLEEN,), phase.spleen)
    paint(KIDNEYS, phase.kidney_cortex)
    paint([Ellipsoid(k.centre, tuple(a * MEDULLA_SCALE for a in k.semi_axes)) for k in KIDNEYS],
          phase.kidney_medulla)
    if phase.portal_vein is not None:
        paint((PORTAL_VEIN, SPLENIC_VEIN), phase.portal_vein)
    if phase.collecting_system is not None:
        paint(COLLECTING + URETERS, phase.collecting_system)
        _paint_bladder(hu, xs, ys, z, phase)
    for n, loop in enumerate(BOWEL_LOOPS):
        m = loop.cross_section(xs, ys, z)
        if m is not None:
            hu[m] = HU_BOWEL_WALL
            inner = Ellipsoid(loop.centre, tuple(a - 3.0 for a in loop.semi_axes))
            mi = inner.cross_section(xs, ys, z)
            if mi is not None:
                hu[mi] = HU_BOWEL_GAS
                if spec.oral_contrast_hu is not None:
                    # Gas rises to the anterior (-y) side of every other loop.
                    gas_cap = (ys < loop.centre[1] - 6.0) if n % 2 == 0 else np.zeros_like(mi)
                    hu[mi & ~gas_cap] = spec.oral_contrast_hu
    free_fat = cavity & ((hu == HU_FAT) | (hu == habitus.fill_hu))  # where pooled blood can go
    for collection in BLOOD_LAYOUTS[spec.blood]:
        if isinstance(collection, WallLining):
            m = collection.mask(xs, ys, z, cavity, cavity_axes)
        elif isinstance(collection, Pooled):
            m = collection.shape.cross_section(xs, ys, z)
            m = None if m is None else m & free_fat
        else:
            m = collection.cross_section(xs, ys, z)
            m = None if m is None else m & body
        if m is not None:
            hu[m] = spec.blood_hu
            labels[m] = BLOOD
    if spec.blush:
        site = BLUSH_SITES[spec.blush_site]
        m = Ellipsoid(site.centre, tuple(a * spec.blush_scale for a in site.semi_axes)).cross_section(xs, ys, z)
        if m is not None:
            m &= body
            hu[m] = spec.blush_hu
            labels[m] = BLUSH
    if spec.granuloma:
        paint(GRANULOMAS, HU_CALCIFICATION)
    return hu, labels


def _paint_bladder(hu: np.ndarray, xs: np.ndarray, ys: np.ndarray, z: float, phase: Phase) -> None:
    """A muscular wall round urine; excreted contrast layers in its dependent (posterior) part."""
    wall = BLADDER.cross_section(xs, ys, z)
    if wall is None:
        return
    hu[wall] = HU_MUSCLE
    lumen = Ellipsoid(BLADDER.centre, tuple(a - 3.0 for a in BLADDER.semi_axes)).cross_section(xs, ys, z)
    if lumen is not None:
        hu[lumen] = HU_URINE
        if phase.bladder_contrast is not None:
            hu[lumen & (ys > BLADDER.centre[1] + 5.0)] = phase.bladder_contrast


def _dataset(spec: PhantomSpec, k: int, z: float, hu: np.ndarray, instance_number: int,
             x0: float, y0: float) -> Dataset:
    intercept = -1024.0 - (8.0 * (k % 3) if spec.vary_rescale else 0.0)
    stored = (hu.astype(np.int32) - int(intercept)).astype(np.uint16)

    now = datetime.datetime(2026, 1, 15, 3, 12, 0)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "ACC0001"
    ds.Modality = spec.modality
    ds.Manufacturer = "trauma-node phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN PELVIS TRAUMA"
    ds.SeriesDescription = spec.series_description
    ds.PatientName = "PHANTOM^ABDOMEN"
    ds.PatientID = "PHANTOM-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = spec.slice_thickness or spec.slice_spacing
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z, 4)]
    ds.ImageOrientationPatient = list(spec.image_orientation)
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    if spec.images_in_acquisition:
        ds.ImagesInAcquisition = spec.slices
    ds.SliceLocation = round(z, 4)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = 50
    ds.WindowWidth = 400
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def _encode(ds: Dataset, transfer_syntax: str) -> None:
    ts = UID(transfer_syntax)
    if ts == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ts
    elif ts.is_compressed and ts != JPEGLosslessSV1:
        ds.compress(ts)


def write_series(spec: PhantomSpec, out_dir: Path | str) -> PhantomTruth:
    """Write the phantom as one DICOM file per slice into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    grid = _grid(spec)
    _, _, x0, y0 = grid
    zs = _z_positions(spec)

    order = list(range(spec.slices))  # index 0 = most cranial
    if spec.order == "ascending":
        order.reverse()
    elif spec.order == "shuffled":
        random.Random(spec.seed).shuffle(order)
    elif spec.order != "descending":
        raise ValueError(f"unknown order {spec.order!r}")
    instance_of = {k: n + 1 for n, k in enumerate(order)}

    counts = {"hemorrhage": 0, "active_extravasation": 0}
    paths: list[Path] = []
    uids: list[str] = []
    for k, z in enumerate(zs):
        hu, labels = render_slice(spec, z, rng, grid)
        counts["hemorrhage"] += int(np.count_nonzero(labels))
        counts["active_extravasation"] += int(np.count_nonzero(labels == BLUSH))
        ds = _dataset(spec, k, z, hu, instance_of[k], x0, y0)
        _encode(ds, spec.transfer_syntax)
        name = (f"IM{instance_of[k]:05d}.dcm" if spec.order != "shuffled"
                else f"{ds.SOPInstanceUID.rsplit('.', 1)[-1]}.dcm")
        path = out_dir / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        uids.append(ds.SOPInstanceUID)

    if UID(spec.transfer_syntax) == JPEGLosslessSV1:
        _dcmtk_jpeg_lossless(paths)

    dy, dx = spec.pixel_spacing
    return PhantomTruth(spec=spec, paths=paths, sop_instance_uids=uids, z_positions=zs,
                        voxel_counts=counts, voxel_volume_mm3=dx * dy * spec.slice_spacing)


def _dcmtk_jpeg_lossless(paths: list[Path]) -> None:
    """pydicom has no JPEG Lossless encoder: DCMTK's dcmcjpeg makes one (SV1)."""
    dcmcjpeg = shutil.which("dcmcjpeg", path="/usr/bin")
    if dcmcjpeg is None:
        raise RuntimeError("dcmcjpeg (Debian package dcmtk) is needed for JPEG Lossless phantoms")
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            out = Path(tmp) / path.name
            subprocess.run([dcmcjpeg, "+e1", str(path), str(out)], check=True)
            shutil.move(out, path)


def make_volume(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The phantom in memory: HU (slices, rows, cols) cranial first, labels, spacing (z, y, x)."""
    rng = np.random.default_rng(spec.seed)
    grid = _grid(spec)
    zs = _z_positions(spec)
    hu = np.empty((spec.slices, spec.rows, spec.cols), dtype=np.int16)
    labels = np.empty(hu.shape, dtype=np.uint8)
    for k, z in enumerate(zs):
        hu[k], labels[k] = render_slice(spec, z, rng, grid)
    dy, dx = spec.pixel_spacing
    return hu, labels, (spec.slice_spacing, dy, dx)


def write_enhanced_series(spec: PhantomSpec, out_path: Path | str) -> PhantomTruth:
    """The phantom as one Legacy Converted Enhanced CT multi-frame file (highdicom).

    Per-frame functional groups carry each frame's position and rescale, as in
    the Enhanced CT family; the truth's paths hold the one file.
    """
    import highdicom as hd
    import pydicom

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        truth = write_series(spec, tmp)
        frames = [pydicom.dcmread(p) for p in truth.paths]
        image = hd.legacy.LegacyConvertedEnhancedCTImage(
            frames, series_instance_uid=spec.series_uid, series_number=3,
            sop_instance_uid=generate_uid(), instance_number=1)
    image.save_as(out_path, enforce_file_format=True)
    truth.paths = [out_path]
    truth.sop_instance_uids = [image.SOPInstanceUID]
    return truth
