"""dcmqi, the reader behind 3D Slicer, as a second reader of the SEG and the SR.

segimage2itkimage turns the SEG into one image per segment (and, with
--mergeSegments, one labelmap when no segments overlap); tid1500reader turns the
SR into JSON. Both are checked against findings.json: geometry, voxel counts,
volumes.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_out import build_outputs
from pipeline import PipelineSettings, run_series
from pipeline.labels import ACTIVE_EXTRAVASATION, HEMORRHAGE

BIN = Path(sys.executable).parent  # dcmqi's wrappers, installed into the venv by make test
SPEC = dict(slices=48, rows=160, cols=160, pixel_spacing=(2.5, 2.5), slice_spacing=5.0,
            blood="splenic_injury", blush=True)


@pytest.fixture(scope="module")
def written(phantom_factory, tmp_path_factory):
    truth = phantom_factory("dcmqi-bleed", **SPEC)
    findings = run_series(truth.paths, PipelineSettings())
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in truth.paths]
    outputs = build_outputs(findings, sources, series_version=1, algorithm_name="trauma-node test",
                            algorithm_version="1")
    folder = tmp_path_factory.mktemp("dcmqi")
    outputs.seg.save_as(folder / "seg.dcm")
    outputs.sr.save_as(folder / "sr.dcm")
    return findings, folder


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels (z, y, x), voxel size (x, y, z) and the affine's origin of a NIfTI-1 file."""
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw, "<i2", 8, 40)
    datatype = int(np.frombuffer(raw, "<i2", 1, 70)[0])
    pixdim = np.frombuffer(raw, "<f4", 8, 76)
    offset = int(np.frombuffer(raw, "<f4", 1, 108)[0])
    srow = np.frombuffer(raw, "<f4", 12, 280).reshape(3, 4)
    dtype = {2: "u1", 4: "<i2", 8: "<i4", 512: "<u2", 16: "<f4"}[datatype]
    shape = tuple(int(d) for d in dims[1:1 + int(dims[0])])
    data = np.frombuffer(raw, dtype, int(np.prod(shape)), offset).reshape(shape[::-1])
    return data, pixdim[1:4].astype(float), srow[:, 3].astype(float)


def test_dcmqi_reads_each_segment_voxel_for_voxel(written):
    findings, folder = written
    out = folder / "segments"
    out.mkdir()
    _run("segimage2itkimage", "--inputDICOM", str(folder / "seg.dcm"), "--outputDirectory", str(out), "-t", "nii")
    meta = json.loads((out / "meta.json").read_text())
    labels = {s["SegmentLabel"]: s["labelID"] for group in meta["segmentAttributes"] for s in group}
    assert set(labels) == {"Hemorrhage, non-enhancing", "Active extravasation"}
    assert meta["BodyPartExamined"] == "ABDOMEN" and meta["ContentCreatorName"]
    voxel_ml = findings.series["voxel_volume_mm3"] / 1000
    for name, key, value in (("Hemorrhage, non-enhancing", "non_enhancing_hemorrhage", HEMORRHAGE),
                             ("Active extravasation", "active_extravasation", ACTIVE_EXTRAVASATION)):
        image = next(p for p in sorted(out.glob("*.nii.gz")) if p.name.startswith(f"{labels[name]}."))
        data, spacing, origin = _read_nifti(image)
        # The geometry: the series' spacing, and its first slice's position (ITK writes RAS).
        dz, dy, dx = findings.series["spacing_mm"]
        assert spacing == pytest.approx([dx, dy, dz], abs=1e-3)
        first = np.asarray(findings.series["slices"][0]["position"])
        positions = np.asarray([s["position"] for s in findings.series["slices"]])
        lowest = positions[np.argmin(positions[:, 2])]
        assert origin[:2] == pytest.approx(-first[:2], abs=1e-3)
        assert origin[2] == pytest.approx(lowest[2], abs=1e-3) or origin[2] == pytest.approx(first[2], abs=1e-3)
        # Voxel for voxel: the count of each segment is the label volume's.
        assert int(np.count_nonzero(data)) == int(np.count_nonzero(findings.labels == value))
        assert np.count_nonzero(data) * voxel_ml == pytest.approx(findings.volumes_ml[key], abs=1e-3)


def test_dcmqi_finds_the_segments_do_not_overlap(written):
    _, folder = written
    out = folder / "merged"
    out.mkdir()
    result = _run("segimage2itkimage", "--inputDICOM", str(folder / "seg.dcm"), "--outputDirectory",
                  str(out), "-t", "nii", "--mergeSegments")
    assert "Identified 1 groups of non-overlapping segments" in result.stdout + result.stderr
    assert len(list(out.glob("*.nii.gz"))) == 1  # one labelmap holds both


def test_dcmqi_reads_the_sr_volumes(written):
    findings, folder = written
    _run("tid1500reader", "--inputDICOM", str(folder / "sr.dcm"), "--outputMetadata", str(folder / "sr.json"))
    document = json.loads((folder / "sr.json").read_text())
    volumes = {}
    for group in document["Measurements"]:
        for item in group["measurementItems"]:
            if item["quantity"]["CodeMeaning"] == "Volume":
                volumes[group["TrackingIdentifier"]] = float(item["value"])
    assert volumes["Hemorrhage, non-enhancing"] == pytest.approx(findings.volumes_ml["non_enhancing_hemorrhage"])
    assert volumes["Active extravasation"] == pytest.approx(findings.volumes_ml["active_extravasation"])
    assert volumes["Hemorrhage, total"] == pytest.approx(findings.volumes_ml["hemorrhage"])
    compartments = {k: v for k, v in volumes.items() if k.startswith("Hemorrhage, ")
                    and k not in ("Hemorrhage, non-enhancing", "Hemorrhage, total")}
    assert sum(compartments.values()) == pytest.approx(
        sum(c.volume_ml for c in findings.compartments if not c.parenchymal), abs=1e-3)
    assert volumes["Spleen injury"] == pytest.approx(findings.organs["spleen"].intraparenchymal_blood_ml)
    segment_groups = [g for g in document["Measurements"] if "ReferencedSegment" in g]
    assert sorted(g["ReferencedSegment"] for g in segment_groups) == [1, 2]
