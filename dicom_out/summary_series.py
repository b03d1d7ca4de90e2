"""What the objects for viewers without SEG/SR support (summary SC, report PDF,
key object selection) share: their series in the source study, who made them."""

from __future__ import annotations

from typing import Any, Sequence

from pydicom.dataset import Dataset

from dicom_out import uids
from dicom_out.device import (DEVICE_SERIAL_NUMBER, MANUFACTURER, Algorithm,
                              output_series_number, series_description)
from dicom_out.source import source_images
from pipeline.findings import Findings

# What each kind is called in its SeriesDescription ("AI-generated hemorrhage <name> v1 - ...").
DESCRIPTIONS = {"SC": "key images", "PDF": "report PDF", "KOS": "key image note"}
_UIDS = {"SC": (uids.SC_SERIES, uids.SC_INSTANCE), "PDF": (uids.PDF_SERIES, uids.PDF_INSTANCE),
         "KOS": (uids.KOS_SERIES, uids.KOS_INSTANCE)}


def series_attributes(kind: str, findings: Findings, series_version: int,
                      algorithm: Algorithm) -> dict[str, Any]:
    """highdicom constructor arguments for the series of one kind ("SC", "PDF", "KOS")."""
    source_series = findings.series["series_instance_uid"]
    return dict(
        series_instance_uid=uids.output_uid(source_series, series_version, _UIDS[kind][0]),
        series_number=output_series_number(kind, series_version),
        series_description=series_description(DESCRIPTIONS[kind], series_version),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
    )


def instance_uid(kind: str, findings: Findings, series_version: int, number: int = 1) -> str:
    """SOP Instance UID of image `number` of the series of one kind."""
    return uids.output_uid(findings.series["series_instance_uid"], series_version,
                           _UIDS[kind][1].format(number=number))


def first_source(findings: Findings, source_datasets: Sequence[Dataset]) -> Dataset:
    """The source image the patient and study attributes are copied from."""
    return source_images(findings, source_datasets).datasets[0]
