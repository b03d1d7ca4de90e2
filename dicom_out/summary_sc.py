"""The summary as Secondary Capture images that any PACS viewer shows.

Image 1 is a page of text (volumes, risk tier, recommendation, research use);
images 2... are the key slices in a soft-tissue window (centre 50 HU, width 400),
cranial first, with the segmentation outlined (red: hemorrhage, yellow: active
extravasation) and a legend burned in below the slice, never over it.

Single-frame Secondary Capture Image Storage, one image each, rather than one
Multi-frame True Color SC: the single-frame SC is the oldest and most widely
supported image object (every PACS stores and shows it; multi-frame SC is missing
from the storage SOP classes some PACS accept, and some viewers show only its first
frame or play it as a cine), each image may have its own size (the page is taller
than a slice), each names the source slice it shows (Source Image Sequence), and
the viewer shows them as a series the reader scrolls like the CT, page first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy.ndimage import binary_dilation

from dicom_out.device import RESEARCH_USE, Algorithm
from dicom_out.image_library import library_header
from dicom_out.key_slices import KeySlice, SliceReader
from dicom_out.summary_series import first_source, instance_uid, series_attributes
from dicom_out.summary_text import TITLE, summary_lines
from pipeline.findings import Findings
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY

WINDOW_CENTER, WINDOW_WIDTH = 50, 400  # soft tissue, HU
MIN_WIDTH = 512  # a key slice is scaled up by a whole factor to at least this width
PAGE_WIDTH = 1024
MARGIN = 0.04  # of the width
OUTLINE_PX = 2  # drawn just outside the region, so that its own pixels stay visible
HEMORRHAGE_RGB = (230, 40, 40)
EXTRAVASATION_RGB = (255, 220, 0)
CONTAINED_RGB = (220, 60, 230)  # the SEG's contained vascular injury colour, lighter on grey
TEXT_RGB = (255, 255, 255)
NOTICE_RGB = (255, 220, 0)
LEGEND = [("Red outline: hemorrhage (all blood)", HEMORRHAGE_RGB),
          ("Yellow outline: active extravasation (contrast blush)", EXTRAVASATION_RGB),
          ("Magenta outline: contained vascular injury (pseudoaneurysm)", CONTAINED_RGB)]


def build_summary_sc(findings: Findings, source_datasets: Sequence[Dataset],
                     keys: list[KeySlice], read_slice: SliceReader, *, series_version: int,
                     algorithm: Algorithm) -> list[Dataset]:
    """The page, then one image per key slice (read_slice gives its HU)."""
    source = first_source(findings, source_datasets)
    page = render_page(findings, keys, algorithm)
    images = [_sc(page, None, 1, source, findings, series_version, algorithm)]
    for number, key in enumerate(keys, start=2):
        pixels = render_key_image(read_slice(key), findings.labels[key.index],
                                  _caption(key, number - 1, len(keys), findings))
        images.append(_sc(pixels, key, number, source, findings, series_version, algorithm))
    return images


def render_page(findings: Findings, keys: list[KeySlice], algorithm: Algorithm) -> np.ndarray:
    title, body = _font(PAGE_WIDTH // 30), _font(PAGE_WIDTH // 46)
    if keys:
        about_keys = (f"Images 2-{len(keys) + 1} of this series: the {len(keys)} slices with the "
                      "most blood and blush, cranial first, soft-tissue window (W 400, L 50). "
                      + ". ".join(text for text, _ in LEGEND) + ".")
    else:
        about_keys = "No key images: no blood was segmented in this series."
    return _text_image([(TITLE, title, TEXT_RGB),
                        (f"{RESEARCH_USE} - AI-generated, not for diagnosis", body, NOTICE_RGB),
                        ("", body, TEXT_RGB),
                        *[(line, body, TEXT_RGB) for line in summary_lines(findings, algorithm)],
                        ("", body, TEXT_RGB), (about_keys, body, TEXT_RGB)], PAGE_WIDTH)


def render_key_image(hu: np.ndarray, labels: np.ndarray, caption: str) -> np.ndarray:
    """The windowed slice, scaled up, outlined, above its legend: (rows, columns, 3) uint8."""
    scale = -(-MIN_WIDTH // hu.shape[1])  # at least 1
    gray = np.clip((hu - (WINDOW_CENTER - WINDOW_WIDTH / 2)) * (255 / WINDOW_WIDTH), 0, 255)
    image = Image.fromarray(gray.astype(np.uint8)).resize(
        (hu.shape[1] * scale, hu.shape[0] * scale), Image.Resampling.BILINEAR)
    pixels = np.array(image.convert("RGB"))
    labels = labels.repeat(scale, axis=0).repeat(scale, axis=1)
    for mask, rgb in ((labels > 0, HEMORRHAGE_RGB), (labels == ACTIVE_EXTRAVASATION, EXTRAVASATION_RGB),
                      (labels == CONTAINED_VASCULAR_INJURY, CONTAINED_RGB)):
        pixels[binary_dilation(mask, iterations=OUTLINE_PX) & ~mask] = rgb
    width = pixels.shape[1]
    font = _font(max(12, width // 34))
    legend = _text_image([*[(text, font, rgb) for text, rgb in LEGEND], (caption, font, TEXT_RGB),
                          (f"{RESEARCH_USE} - AI outline, not for diagnosis", font, NOTICE_RGB)],
                         width)
    return np.vstack([pixels, legend])


def _caption(key: KeySlice, number: int, count: int, findings: Findings) -> str:
    slices = len(findings.series["slices"])
    where = (f"frame {key.frame}" if key.frame is not None
             else f"image {key.dataset.get('InstanceNumber', '?')}")
    _, dy, dx = findings.series["spacing_mm"]
    cm2 = dy * dx / 100
    return (f"Key image {number} of {count}: slice {key.index + 1} of {slices} (cranial first), "
            f"source series {key.dataset.get('SeriesNumber', '?')} {where}. Blood "
            f"{key.blood_voxels * cm2:.1f} cm2, blush {key.blush_voxels * cm2:.1f} cm2 on this slice.")


@dataclass(frozen=True)
class _Line:
    text: str
    font: ImageFont.FreeTypeFont
    fill: tuple[int, int, int]
    x: float


def _text_image(paragraphs: list[tuple[str, ImageFont.FreeTypeFont, tuple[int, int, int]]],
                width: int) -> np.ndarray:
    """White-on-black text, wrapped to the width; '- ' items with a hanging indent."""
    margin = round(width * MARGIN)
    lines: list[_Line] = []
    for text, font, fill in paragraphs:
        indent = font.getlength("- ") if text.startswith("- ") else 0
        for n, part in enumerate(_wrap(text, font, width - 2 * margin - indent)):
            lines.append(_Line(part, font, fill, margin + (indent if n else 0)))
    heights = [round(line.font.size * 1.35) for line in lines]
    image = Image.new("RGB", (width, sum(heights) + 2 * margin))
    draw = ImageDraw.Draw(image)
    y = margin
    for line, height in zip(lines, heights):
        draw.text((line.x, y), line.text, font=line.font, fill=line.fill)
        y += height
    return np.array(image)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line]


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's own font: no font files needed


def _sc(pixels: np.ndarray, key: KeySlice | None, number: int, source: Dataset,
        findings: Findings, series_version: int, algorithm: Algorithm) -> Dataset:
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT",
        patient_orientation=_orientation(key.dataset if key else source),
        sop_instance_uid=instance_uid("SC", findings, series_version, number),
        instance_number=number, transfer_syntax_uid=ExplicitVRLittleEndian,
        **series_attributes("SC", findings, series_version, algorithm))
    sc.copy_patient_and_study_information(source)
    sc.ConversionType = "WSD"  # made by software on a workstation
    sc.BurnedInAnnotation = "YES"
    sc.ImageLaterality = "U"  # unpaired: the abdomen, or a page
    if "BodyPartExamined" in source:
        sc.BodyPartExamined = source.BodyPartExamined
    sc.ImageComments = algorithm.notice()
    if key is None:
        sc.PatientOrientation = ""  # a page of text has no orientation
        sc.DerivationDescription = "AI summary page: text only"
        return sc
    reference = Dataset()
    reference.ReferencedSOPClassUID = key.dataset.SOPClassUID
    reference.ReferencedSOPInstanceUID = key.dataset.SOPInstanceUID
    if key.frame is not None:
        reference.ReferencedFrameNumber = key.frame
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = (f"Source slice in a soft-tissue window (W {WINDOW_WIDTH}, "
                                f"L {WINDOW_CENTER}), scaled up, AI segmentation outlined: "
                                "red hemorrhage, yellow active extravasation")
    return sc


def _orientation(image: Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions) from the image's plane, e.g. ('L', 'P')."""
    cosines = [float(v) for v in library_header(image).get("ImageOrientationPatient",
                                                          [1, 0, 0, 0, 1, 0])]
    return _direction(cosines[:3]), _direction(cosines[3:])


def _direction(vector: list[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    return ("LR", "PA", "HF")[axis][0 if vector[axis] > 0 else 1]
