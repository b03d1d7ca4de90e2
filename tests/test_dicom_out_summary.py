"""The objects for viewers without SEG/SR support: summary Secondary Capture images,
the report as an Encapsulated PDF, a Key Object Selection of the key slices.

Checked as a reader would: the outlines sit on the blood, the page and the PDF
state the volumes, tier and research use, the KOS points at bloody slices of the
source CT; every object passes dciodvfy; a destination that asks for sc and kos
gets those and nothing else in a real Orthanc.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from scipy.ndimage import distance_transform_edt

from support.nodes import free_port, storescu, wait_for
from dicom_out import KINDS, build_outputs
from dicom_out.device import Algorithm, output_series_number
from dicom_out.key_slices import choose
from dicom_out.summary_sc import (EXTRAVASATION_RGB, HEMORRHAGE_RGB, OUTLINE_PX, PAGE_WIDTH,
                                  _font, _text_image, render_page)
from dicom_out.summary_text import tier_text
from node.config import OBJECT_KINDS
from node.work.results import write_outputs
from support.orthanc import Orthanc
from support.phantom import PhantomSpec, write_enhanced_series
from pipeline import PipelineSettings, run_series
from pipeline.findings import Findings
from pipeline.labels import ACTIVE_EXTRAVASATION
from pipeline.volume import load_volume
from test_e2e_pacs import destination_config

DCIODVFY = "/usr/bin/dciodvfy"
PDFTOTEXT = "/usr/bin/pdftotext"
SMALL = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.0, 3.0), slice_spacing=5.0)
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


@dataclass
class Written:
    findings: Findings
    paths: list[Path]  # the source files
    objects: dict[str, list[Path]]  # as node.work.results.write_outputs wrote them

    def read(self, kind: str) -> list[Dataset]:
        return [pydicom.dcmread(p) for p in self.objects.get(kind, [])]

    @property
    def slice_of(self) -> dict[tuple[str, int | None], int]:
        """(SOP Instance UID, frame) of each slice -> its index in the label volume."""
        return {(s["sop_instance_uid"], s["frame"]): k
                for k, s in enumerate(self.findings.series["slices"])}


def _write(paths: list[Path], out: Path) -> Written:
    findings = run_series(paths, PipelineSettings())
    return Written(findings, paths, write_outputs(findings, paths, out, series_version=1))


@pytest.fixture(scope="module")
def bleed(phantom_factory, tmp_path_factory) -> Written:
    truth = phantom_factory("summary_bleed", **SMALL, blood="large", blush=True)
    return _write(truth.paths, tmp_path_factory.mktemp("summary_bleed"))


@pytest.fixture(scope="module")
def clean(phantom_factory, tmp_path_factory) -> Written:
    truth = phantom_factory("summary_clean", **SMALL, blood="none")
    return _write(truth.paths, tmp_path_factory.mktemp("summary_clean"))


@pytest.fixture(scope="module")
def multi_frame(tmp_path_factory) -> Written:
    """The bleed as one Legacy Converted Enhanced CT file: key slices are frames."""
    folder = tmp_path_factory.mktemp("summary_multi_frame")
    truth = write_enhanced_series(PhantomSpec(**SMALL, blood="large", blush=True),
                                  folder / "enhanced.dcm")
    return _write(truth.paths, folder / "out")


@pytest.fixture(params=["bleed", "clean", "multi_frame"])
def written(request) -> Written:
    return request.getfixturevalue(request.param)


def _key_images(written: Written) -> list[tuple[Dataset, int]]:
    """The key images of the SC series and the label volume slice each shows."""
    out = []
    for image in written.read("sc"):
        if "SourceImageSequence" in image:
            (source,) = image.SourceImageSequence
            frame = source.get("ReferencedFrameNumber")
            out.append((image, written.slice_of[(source.ReferencedSOPInstanceUID,
                                                 int(frame) if frame else None)]))
    return out


# --- what a viewer gets -----------------------------------------------------------------

def test_every_object_passes_dciodvfy(written):
    for kind in ("sc", "pdf", "kos"):
        for path in written.objects.get(kind, []):
            result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True,
                                    timeout=60)
            problems = [line for line in (result.stdout + result.stderr).splitlines()
                        if line.startswith(("Error", "Warning"))]
            assert problems == [], f"{path.name}: {problems}"


def test_the_objects_join_the_source_study_in_their_own_series(written):
    source = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    seg_sr = [ds for kind in ("seg", "sr") for ds in written.read(kind)]
    summary = {kind: written.read(kind) for kind in ("sc", "pdf", "kos")}
    assert len(summary["pdf"]) == 1
    assert len(summary["kos"]) == (0 if written.findings.volumes_ml["hemorrhage"] == 0 else 1)
    series = {}
    for kind, objects in summary.items():
        for ds in objects:
            for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                            "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"):
                assert ds.get(keyword) == source.get(keyword), (kind, keyword)
            assert "RESEARCH USE ONLY" in ds.SeriesDescription
            assert ds.Manufacturer == seg_sr[0].Manufacturer
            assert ds.ManufacturerModelName == seg_sr[0].ManufacturerModelName
            series.setdefault(kind, set()).add((ds.SeriesInstanceUID, int(ds.SeriesNumber)))
    assert all(len(found) == 1 for found in series.values())  # one series per kind
    numbers = [number for found in series.values() for _, number in found]
    numbers += [int(ds.SeriesNumber) for ds in seg_sr]
    uids = [uid for found in series.values() for uid, _ in found]
    uids += [ds.SeriesInstanceUID for ds in seg_sr] + [source.SeriesInstanceUID]
    assert len(set(numbers)) == len(numbers) and len(set(uids)) == len(uids)
    for ds in summary["sc"]:
        assert (ds.SOPClassUID, ds.Modality, ds.BurnedInAnnotation) == (SC_STORAGE, "OT", "YES")
        assert ds.PhotometricInterpretation == "RGB"
    assert [int(ds.InstanceNumber) for ds in summary["sc"]] == list(
        range(1, len(summary["sc"]) + 1))
    (pdf,) = summary["pdf"]
    assert (pdf.SOPClassUID, pdf.Modality, pdf.BurnedInAnnotation) == (PDF_STORAGE, "DOC", "YES")
    for ds in summary["kos"]:
        assert (ds.SOPClassUID, ds.Modality) == (KOS_STORAGE, "KO")


def test_the_kos_flags_the_key_slices_of_the_source_series(written):
    """Bloody slices of the source CT, the most blood and the most blush among them,
    the same slices as the key images show."""
    if not written.objects.get("kos"):
        assert written.findings.volumes_ml["hemorrhage"] == 0 and len(written.read("sc")) == 1
        return
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(written.read("kos")[0])
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"  # Of Interest
    source = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    referenced, described = [], False
    for item in kos.ContentSequence:
        if item.ValueType == "IMAGE":
            reference = item.ReferencedSOPSequence[0]
            study, series, _ = kos.resolve_reference(reference.ReferencedSOPInstanceUID)
            assert (study, series) == (source.StudyInstanceUID, source.SeriesInstanceUID)
            assert reference.ReferencedSOPClassUID == source.SOPClassUID
            frames = reference.get("ReferencedFrameNumber")
            frames = [None] if frames is None else list(np.atleast_1d(frames))
            referenced += [written.slice_of[(reference.ReferencedSOPInstanceUID,
                                             int(f) if f else None)] for f in frames]
        elif item.ConceptNameCodeSequence[0].CodeMeaning == "Key Object Description":
            described = "RESEARCH USE ONLY" in item.TextValue
    assert described
    labels = written.findings.labels
    blood = (labels > 0).sum(axis=(1, 2))
    blush = (labels == ACTIVE_EXTRAVASATION).sum(axis=(1, 2))
    assert 1 <= len(referenced) <= 6 and referenced == sorted(set(referenced))  # cranial first
    assert all(blood[k] > 0 for k in referenced)
    assert int(np.argmax(blush)) in referenced and blood[referenced].max() >= 0.8 * blood.max()
    assert referenced == [k for _, k in _key_images(written)]


def test_the_key_images_outline_the_blood_over_the_soft_tissue_window(written):
    key_images = _key_images(written)
    if written.findings.volumes_ml["hemorrhage"] == 0:
        assert key_images == []
        return
    source = pydicom.dcmread(written.paths[0], stop_before_pixels=True)
    hu = load_volume(written.paths).hu.astype(float)  # as the pipeline read the series
    for image, k in key_images:
        pixels = image.pixel_array
        scale = image.Columns // source.Columns
        assert scale * source.Columns >= 512 and image.Columns == scale * source.Columns
        slice_image = pixels[:source.Rows * scale]  # the legend is below the slice
        labels = written.findings.labels[k].repeat(scale, 0).repeat(scale, 1)
        for mask, rgb in ((labels > 0, HEMORRHAGE_RGB),
                          (labels == ACTIVE_EXTRAVASATION, EXTRAVASATION_RGB)):
            drawn = np.all(slice_image == rgb, axis=-1)
            assert drawn.any() == mask.any()
            if mask.any():  # around the region, never on it
                assert not (drawn & mask).any()
                assert distance_transform_edt(~mask)[drawn].max() <= OUTLINE_PX * 1.5
        # Outside the outlines the slice is gray, in the soft-tissue window.
        gray = np.all(slice_image == slice_image[..., :1], axis=-1)
        assert gray.mean() > 0.9
        blocks = slice_image[..., 0].reshape(source.Rows, scale, source.Columns, scale).mean(axis=(1, 3))
        expected = np.clip((hu[k] + 150) * 255 / 400, 0, 255)  # centre 50 HU, width 400
        away = distance_transform_edt(written.findings.labels[k] == 0) > 2
        assert np.median(np.abs(blocks - expected)[away]) < 4
        # The legend, in the outline colours, below the slice.
        legend = pixels[source.Rows * scale:]
        assert np.all(legend == HEMORRHAGE_RGB, axis=-1).any()
        assert np.all(legend == EXTRAVASATION_RGB, axis=-1).any()


def _shows_line(page: np.ndarray, line: str) -> bool:
    """Whether the page holds the line as its renderer draws body text, anywhere down
    the left margin (what a reader would read, without OCR)."""
    template = _text_image([(line, _font(PAGE_WIDTH // 46), (255, 255, 255))], PAGE_WIDTH)
    rows = np.flatnonzero(template.any(axis=(1, 2)))
    columns = np.flatnonzero(template.any(axis=(0, 2)))
    glyphs = template[rows[0]:rows[-1] + 1, :columns[-1] + 1]
    height = len(glyphs)
    return any(np.array_equal(page[y:y + height, :glyphs.shape[1]], glyphs)
               for y in range(page.shape[0] - height))


def test_the_page_states_volumes_tier_and_research_use(bleed, clean):
    pages = {}
    for name, written in (("bleed", bleed), ("clean", clean)):
        page = written.read("sc")[0]
        assert "SourceImageSequence" not in page and int(page.InstanceNumber) == 1
        pixels = page.pixel_array
        assert 0.01 < (pixels.max(axis=-1) > 0).mean() < 0.5  # text on black, not blank
        volumes = written.findings.volumes_ml
        for line in (f"Hemorrhage (all blood, blush included): {volumes['hemorrhage']:.1f} mL",
                     f"Active extravasation (contrast blush): "
                     f"{volumes['active_extravasation']:.1f} mL",
                     f"Risk tier: {tier_text(written.findings.risk_tier)}"):
            assert _shows_line(pixels, line), (name, line)
        pages[name] = pixels
    assert not _shows_line(pages["clean"], "Risk tier: HIGH")
    assert pages["bleed"].shape != pages["clean"].shape or (pages["bleed"] != pages["clean"]).any()


def test_any_tier_is_shown_as_words(bleed):
    assert tier_text("not_assessed") == "NOT ASSESSED" and tier_text("high") == "HIGH"
    findings = dataclasses.replace(bleed.findings, risk_tier="not_assessed")
    page = render_page(findings, [], Algorithm.of(findings, "trauma-node test", "1"))
    assert _shows_line(page, "Risk tier: NOT ASSESSED")


def test_the_pdf_reads_as_the_report(written, tmp_path):
    (pdf,) = written.read("pdf")
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert "RESEARCH USE ONLY" in pdf.DocumentTitle
    document = pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength]
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    (tmp_path / "report.pdf").write_bytes(document)
    result = subprocess.run([PDFTOTEXT, "-layout", str(tmp_path / "report.pdf"), "-"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""  # no syntax errors either
    text = " ".join(_without_running_heads(result.stdout).split())
    findings = written.findings
    volumes = findings.volumes_ml
    for expected in (f"Hemorrhage (all blood, blush included): {volumes['hemorrhage']:.1f} mL",
                     f"Active extravasation (contrast blush): "
                     f"{volumes['active_extravasation']:.1f} mL",
                     f"Risk tier: {tier_text(findings.risk_tier)}",
                     findings.recommendation.summary, findings.research_use, "RESEARCH USE ONLY"):
        assert " ".join(expected.split()) in text
    for line in findings.report.splitlines():  # the whole report, wrapped
        assert " ".join(line.split()) in text


def _without_running_heads(text: str) -> str:
    """The PDF's text as one flow: each page's title line and footer taken out, so that a
    report line wrapped over a page break reads as one line."""
    pages = [[line for line in page.splitlines() if line.strip()] for page in text.split("\f")]
    title = pages[0][0].strip() if pages and pages[0] else ""
    body = []
    for lines in pages:
        if lines and re.search(r"page \d+ of \d+$", lines[-1].strip()):
            lines = lines[:-1]
        if lines and lines[0].strip() == title:
            lines = lines[1:]
        body += lines
    return title + "\n" + "\n".join(body)


# --- identity ---------------------------------------------------------------------------

def test_uids_are_stable_per_series_version(bleed):
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in bleed.paths]
    algorithm = dict(algorithm_name="trauma-node", algorithm_version="0.1.0")
    again = build_outputs(bleed.findings, sources[::-1], series_version=1, **algorithm)
    later = build_outputs(bleed.findings, sources, series_version=2, **algorithm)
    first = [ds for kind in ("sc", "pdf", "kos") for ds in bleed.read(kind)]
    rebuilt = [ds for kind in ("sc", "pdf", "kos") for ds in again.by_kind()[kind]]
    assert [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in rebuilt] == [
        (ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in first]
    assert [ds.PixelData for ds in again.sc] == [ds.PixelData for ds in bleed.read("sc")]
    uids_2 = {uid for ds in later.datasets for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID)}
    assert not uids_2 & {uid for ds in first for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID)}
    numbers_1 = [int(ds.SeriesNumber) for ds in (again.seg, again.sr, again.sc[0], again.pdf, again.kos)]
    assert numbers_1 == [9001, 9002, 9003, 9004, 9005]
    assert min(int(ds.SeriesNumber) for ds in later.datasets) > max(numbers_1)


def test_series_numbers_never_collide_across_kinds_and_versions():
    numbers = [output_series_number(kind, version) for version in range(1, 1001)
               for kind in ("SEG", "SR", "SC", "PDF", "KOS")]
    assert len(set(numbers)) == len(numbers) and numbers == sorted(numbers)
    assert min(numbers) > 9000


def test_the_node_knows_every_kind_dicom_out_builds():
    assert OBJECT_KINDS == KINDS


def test_without_label_volume_the_summary_is_the_page_and_the_pdf(bleed):
    findings = Findings.from_json_dict(bleed.findings.to_json_dict())  # as from findings.json
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in bleed.paths]
    outputs = build_outputs(findings, sources, series_version=1, algorithm_name="trauma-node",
                            algorithm_version="0.1.0")
    assert len(outputs.sc) == 1 and outputs.kos is None and outputs.pdf is not None


# --- choosing the key slices --------------------------------------------------------------

def test_key_slices_cover_every_collection_and_the_blush():
    blood = np.zeros(60, int)
    blood[5:20] = [10, 20, 40, 60, 80, 90, 100, 95, 90, 80, 60, 40, 20, 10, 5]  # a big bleed
    blood[40:44] = [8, 12, 9, 4]  # a small one lower down
    blush = np.zeros(60, int)
    blush[15] = 3
    chosen = choose(blood, blush, 6)
    assert chosen == sorted(chosen) and len(chosen) == 6
    assert 15 in chosen and 11 in chosen  # the blush, the most blood
    assert any(40 <= k < 44 for k in chosen)
    assert all(blood[k] > 0 for k in chosen)
    assert choose(blood * 0, blush * 0, 6) == []
    two = np.zeros(10, int)
    two[[3, 4]] = 5
    assert choose(two, two * 0, 6) == [3, 4]


# --- per destination, in a real PACS --------------------------------------------------------

def test_a_destination_asking_for_sc_and_kos_gets_only_those(node_factory, phantom_factory,
                                                             tmp_path):
    truth = phantom_factory("summary_e2e", **SMALL, blood="large", blush=True)
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
    try:
        node = node_factory(destination_config(pacs, objects=("sc", "kos")))
        storescu([truth.paths[0].parent], node.dicom_port)

        def delivered():
            studies = node.studies()
            deliveries = studies[0]["deliveries"] if studies else []
            return (deliveries and all(d["state"] == "sent" for d in deliveries)
                    and deliveries)

        deliveries = wait_for(delivered, timeout=120, what="sc and kos delivered")
        result = node.series(truth.spec.series_uid)["jobs"][-1]["result"]
        objects = result["outputs"]["objects"]
        assert set(objects) == set(OBJECT_KINDS)  # all written, two kinds sent
        assert sorted(d["kind"] for d in deliveries) == sorted(
            ["kos"] + ["sc"] * len(objects["sc"]))
        in_pacs = {}
        for orthanc_id in pacs.get("/instances"):
            tags = pacs.get(f"/instances/{orthanc_id}/simplified-tags")
            assert tags["StudyInstanceUID"] == truth.spec.study_uid
            in_pacs.setdefault(tags["SOPClassUID"], []).append(tags["SOPInstanceUID"])
        assert set(in_pacs) == {SC_STORAGE, KOS_STORAGE}
        directory = Path(result["outputs"]["directory"])
        assert sorted(in_pacs[SC_STORAGE]) == sorted(
            pydicom.dcmread(directory / name).SOPInstanceUID for name in objects["sc"])
        (kos_uid,) = in_pacs[KOS_STORAGE]
        assert kos_uid == pydicom.dcmread(directory / objects["kos"][0]).SOPInstanceUID
    finally:
        pacs.stop()


def test_analyze_writes_them_too(phantom_factory, tmp_path):
    from node.commands.analyze import analyze

    truth = phantom_factory("summary_bleed", **SMALL, blood="large", blush=True)
    lines: list[str] = []
    analyze(truth.paths[0].parent, tmp_path / "out", PipelineSettings(), progress=lines.append)
    sc = sorted((tmp_path / "out").glob("sc-*.dcm"))
    assert [p.name for p in sc] == [f"sc-{n:02d}.dcm" for n in range(1, len(sc) + 1)]
    assert len(sc) > 1 and (tmp_path / "out" / "pdf.dcm").is_file()
    assert pydicom.dcmread(tmp_path / "out" / "kos.dcm").Modality == "KO"
    assert "sc-01.dcm" in lines[-1] and "pdf.dcm" in lines[-1] and "kos.dcm" in lines[-1]


def test_the_summary_says_which_organ_is_injured_and_what_each_blush_may_be():
    """A reader of the summary page alone learns what the volumes do not say."""
    import dataclasses

    from dicom_out.device import Algorithm
    from dicom_out.summary_text import summary_lines
    from support.qa_support import findings_dict

    findings = Findings.from_json_dict(findings_dict("bleed"))  # a splenic hematoma and a blush
    lines = summary_lines(findings, Algorithm.of(findings, "trauma-node test", "1"))
    organ = next(line for line in lines if line.startswith("Organ injury"))
    assert "spleen: intraparenchymal blood" in organ and "liver" not in organ
    assert any("not told apart on one phase" in line for line in lines if line.startswith("- Blush"))
    volumes = dict(findings.volumes_ml, contained_vascular_injury=0.6)
    contained = summary_lines(dataclasses.replace(findings, volumes_ml=volumes),
                              Algorithm.of(findings, "trauma-node test", "1"))
    assert "Contained vascular injury (pseudoaneurysm): 0.6 mL" in contained
