"""Datasets to measure the node on: the RSNA 2023 layout and a site's folder, read back as
written, bad rows and missing files named and skipped, masks placed by geometry."""

from __future__ import annotations

import numpy as np
import pytest

from support.datasets_support import healthy_row, truth_labels, write_rsna, write_site
from evaluation.dataset import RSNA, SITE, DatasetError, open_dataset
from evaluation.masks import load_mask
from pipeline.volume import load_volume

SMALL = dict(slices=40, rows=64, cols=64, pixel_spacing=(5.0, 5.0), slice_spacing=5.0)


def series_geometry(paths) -> dict:
    volume = load_volume(paths, 3)
    series = volume.geometry_dict()
    series["slices"] = [{"sop_instance_uid": s.sop_instance_uid, "position": list(s.position)}
                        for s in volume.slices]
    return series


def test_rsna_layout_read_back_with_bad_rows_named(tmp_path, phantom_factory):
    bleeding = phantom_factory("ds-bleeding", **SMALL, blood="large", blush=True)
    clean = phantom_factory("ds-clean", **SMALL, seed=4)
    bad = healthy_row("30003")
    bad["liver_low"] = 1  # liver healthy and low at once
    written = write_rsna(tmp_path / "rsna", {
        "10001": (bleeding, {"spleen_low": 1, "extravasation_injury": 1}),
        "10002": (clean, {}),
    }, extra_rows=[bad, healthy_row("40004")])
    (tmp_path / "rsna" / "train_images" / "50005" / "77").mkdir(parents=True)  # no files, no labels

    dataset = open_dataset(tmp_path / "rsna")
    assert dataset.layout == RSNA
    assert [s.patient_id for s in dataset.studies] == ["10001", "10002"]
    first = dataset.studies[0]
    assert first.labels.level("spleen") == "low" and first.labels.level("liver") == "healthy"
    assert first.labels.level("extravasation") == "injury" and first.labels.any_injury
    assert not dataset.studies[1].labels.any_injury
    (series,) = first.series
    assert series.series_id == written.series_of["10001"] and len(series.files) == 40
    assert [int(p.stem) for p in series.files] == sorted(int(p.stem) for p in series.files)
    assert series.meta["aortic_hu"] == "180.0"
    assert series.injured_instances == {20: ["Active_Extravasation"]}
    assert any(p.startswith("train.csv row 4: liver_* columns must hold exactly one 1")
               for p in dataset.problems), dataset.problems
    assert "patient 40004: labelled but no images found; skipped" in dataset.problems

    # The organ mask lands where it was drawn, by the NIfTI affine and the series' positions.
    organs = load_mask(series.organ_mask, series_geometry(series.files))
    expected = np.zeros_like(organs)
    expected[5:10, 10:20, 30:40] = 2
    assert np.array_equal(organs, expected)


def test_site_layout_with_nifti_hemorrhage_masks(tmp_path, phantom_factory):
    bleeding = phantom_factory("ds-bleeding", **SMALL, blood="large", blush=True)
    write_site(tmp_path / "site", {"A7": (bleeding, {"spleen_high": 1, "extravasation_injury": 1})})
    (tmp_path / "site" / "A7" / "CT" / "notes.txt").write_text("not DICOM")

    dataset = open_dataset(tmp_path / "site")
    assert dataset.layout == SITE
    (study,) = dataset.studies
    (series,) = study.series
    assert series.series_id == bleeding.spec.series_uid and len(series.files) == 40
    assert study.labels.level("spleen") == "high"
    assert any("notes.txt: not a DICOM file" in p for p in dataset.problems)
    mask = load_mask(series.hemorrhage_mask, series_geometry(series.files))
    truth = truth_labels(bleeding)
    assert np.array_equal(mask, truth) and (truth == 2).any() and (truth == 1).any()


def test_no_labels_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="neither train.csv .* nor labels.csv"):
        open_dataset(tmp_path)
