"""The node's SEG and SR in a real OHIF Viewer v3, as a reader opens them.

A phantom with a large bleed and a contrast blush is analysed (`trauma-node analyze`);
the CT, seg.dcm and sr.dcm go into an Orthanc with its DICOMweb plugin; the prebuilt
OHIF Viewer (@ohif/app 3.13.2, which `make ohif` installs) is served offline on one
loopback origin (tests/support/ohif_viewer.py) and opened in Debian's headless Chromium.

What a reader checks: the CT shows; the SEG hydrates with its segment names and colours,
and the volumes OHIF computes for the segments (its segmentation panel's statistics)
are the report's; the SR opens without breaking the viewer and shows its measurements.

Screenshots, the browser console and the requests the viewer made are kept for each
test under the pytest tmp dir and copied to test-artifacts/ohif/<test>/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pydicom
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from support.nodes import ROOT, free_port
from support.ohif_viewer import OhifViewer
from support.orthanc import Orthanc

import dicom_out.segments

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts" / "ohif"
# Large enough for OHIF to build a volume and for the blush to be a few dozen voxels.
PHANTOM = dict(slices=60, rows=256, cols=256, pixel_spacing=(1.5, 1.5), blood="large",
               blush=True)
VOLUME_TOLERANCE = 0.01  # relative
COLOUR_TOLERANCE = 3  # per RGB channel: the SEG stores colours as CIELab


@dataclass(repr=False)  # no dataset dumps in failure reports
class Study:
    study_uid: str
    findings: dict
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    pacs: Orthanc
    viewer: OhifViewer
    clean_uid: str  # a second study, without blood: its SR is a text report
    clean_findings: dict


def _analyse(truth, out: Path) -> list[Path]:
    """`trauma-node analyze` as a user runs it; the objects it wrote."""
    analysed = subprocess.run([sys.executable, "-m", "node.cli", "analyze",
                               str(truth.paths[0].parent), "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert analysed.returncode == 0, f"trauma-node analyze failed: {analysed.stderr[-2000:]}"
    return sorted(out.glob("*.dcm"))


@pytest.fixture(scope="module")
def study(phantom_factory, tmp_path_factory):
    truth = phantom_factory("ohif", **PHANTOM)
    clean = phantom_factory("ohif-clean", **{**PHANTOM, "blood": "none", "blush": False})
    out, clean_out = tmp_path_factory.mktemp("ohif_analysis"), tmp_path_factory.mktemp("ohif_clean")
    objects, clean_objects = _analyse(truth, out), _analyse(clean, clean_out)
    pacs = Orthanc(tmp_path_factory.mktemp("ohif_orthanc"), free_port(), free_port(),
                   dicomweb=True).start()
    try:
        # The CT with every object the node makes: SEG, SR, the summary SC series, PDF, KOS.
        for path in [*truth.paths, *objects, *clean.paths, *clean_objects]:
            pacs.upload(path)
        with OhifViewer(pacs.url) as viewer:
            yield Study(truth.spec.study_uid, json.loads((out / "findings.json").read_text()),
                        pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm"),
                        pacs, viewer, clean.spec.study_uid,
                        json.loads((clean_out / "findings.json").read_text()))
    finally:
        pacs.stop()


@dataclass
class Browser:
    """Chromium with its console collected and screenshots kept."""

    driver: webdriver.Chrome
    artifacts: Path
    console: list[dict] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)  # what the test had to work around
    shots: int = 0

    def collect(self) -> list[dict]:
        try:
            self.console += self.driver.get_log("browser")
        except WebDriverException:
            pass
        return self.console

    def console_text(self) -> str:
        return "\n".join(f"{e['level']} {e['message']}" for e in self.collect())

    def shot(self, name: str) -> None:
        self.shots += 1
        self.driver.save_screenshot(str(self.artifacts / f"{self.shots}-{name}.png"))

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, predicate, timeout: float, what: str):
        """predicate's first truthy value; fails the test after timeout."""
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda d: predicate(self), message=f"timed out after {timeout:.0f} s waiting for {what}")

    def poll(self, predicate, timeout: float):
        """predicate's first truthy value, or its last one after timeout (no failure here:
        the caller's assertions say what was wrong)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.1)


@pytest.fixture
def browser(request, tmp_path, study):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1600,1000",
                 # WebGL (Cornerstone3D renders with it) on SwiftShader, asked for by name:
                 # Chromium's silent fallback to it is deprecated.
                 "--enable-unsafe-swiftshader",
                 # Offline: no host but loopback resolves, so nothing outside can be fetched.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    artifacts = tmp_path / "ohif-artifacts"
    artifacts.mkdir()
    session = Browser(driver, artifacts)
    first_request = len(study.viewer.requests)  # the viewer server is shared by the tests
    try:
        yield session
    finally:
        try:
            session.shot("last")
        except WebDriverException:
            pass
        session.collect()
        (artifacts / "console.jsonl").write_text(
            "".join(json.dumps(e) + "\n" for e in session.console))
        try:
            events = driver.execute_script("return window.__segmentationEvents || null")
        except WebDriverException:
            events = None
        if events:
            (artifacts / "segmentation-events.json").write_text(json.dumps(events))
        if session.notes:
            (artifacts / "notes.txt").write_text("".join(n + "\n" for n in session.notes))
        (artifacts / "requests.txt").write_text("".join(
            f"{status} {method} {path}\n"
            for method, path, status in study.viewer.requests[first_request:]))
        driver.quit()
        kept = ARTIFACTS / request.node.name
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(artifacts, kept)


# --- what the page shows, read through OHIF's services (window.services, set by its
# cornerstone extension, as OHIF's own end-to-end tests read them) --------------------

CT_RENDERED = """
const s = window.services, cs = window.cornerstone;
if (!s || !cs) return false;
const ct = s.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'CT');
const viewports = cs.getRenderingEngines().flatMap(e => e.getViewports());
return !!ct && viewports.length > 0 && viewports.every(v => v.viewportStatus === 'rendered'
    && !!v.getCurrentImageId());
"""

SEGMENTS = """
const s = window.services.segmentationService;
const viewportId = window.services.viewportGridService.getActiveViewportId();
return s.getSegmentations().map(seg => ({
  label: seg.label,
  segments: Object.entries(seg.segments).filter(([k, x]) => x && Number(k) > 0).map(([k, x]) => ({
    index: Number(k), label: x.label,
    colour: s.getSegmentColor(viewportId, seg.segmentationId, Number(k)),
    volume: x.cachedStats?.namedStats?.volume ?? null})),
}));
"""

RECORD_SEGMENTATION_EVENTS = """
window.__segmentationEvents = [];
const s = window.services.segmentationService;
for (const [name, event] of Object.entries(s.EVENTS)) {
  s.subscribe(event, () => window.__segmentationEvents.push([Math.round(performance.now()), name]));
}
"""

RECOMPUTE_STATISTICS = """
const s = window.services.segmentationService;
for (const seg of s.getSegmentations()) {
  window.cornerstoneTools.segmentation.triggerSegmentationEvents
    .triggerSegmentationDataModified(seg.segmentationId);
}
"""

SR_STATE = """
const ds = window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SR');
if (!ds) return null;
return {isLoaded: !!ds.isLoaded, measurements: (ds.measurements || []).map(m => ({
  trackingIdentifier: m.TrackingIdentifier, loaded: m.loaded, labels: m.labels || []}))};
"""

VIEWPORT_SHOWS_AN_IMAGE = """
const pane = document.querySelector('[data-cy="viewport-pane"]');
const cs = window.cornerstone;
const viewports = cs ? cs.getRenderingEngines().flatMap(e => e.getViewports()) : [];
return !!pane && pane.childElementCount > 0 && viewports.some(v => !!v.getCurrentImageId());
"""


CT_LOADED = """
const cs = window.cornerstone;
const ids = cs.getRenderingEngines().flatMap(e => e.getViewports())
    .flatMap(v => v.getImageIds ? v.getImageIds() : []);
return ids.length > 0 && ids.every(id => !!cs.cache.getImage(id));
"""


def _with_statistics(browser: Browser) -> list[dict] | None:
    """OHIF's segmentations once every segment has its statistics."""
    segmentations = browser.js(SEGMENTS)
    if len(segmentations) == 1 and segmentations[0]["segments"] and all(
            x["volume"] for x in segmentations[0]["segments"]):
        return segmentations
    return None


def _open_study(browser: Browser, study: Study, study_uid: str | None = None) -> None:
    browser.driver.get(study.viewer.viewer_url(study_uid or study.study_uid))
    browser.wait(lambda b: b.js(CT_RENDERED), 90, "OHIF to render the CT")
    # Every slice in, as a reader waits for the series to load: OHIF computes a segment's
    # statistics once, when its labelmap is loaded, from the slices then in its cache.
    browser.wait(lambda b: b.js(CT_LOADED), 90, "OHIF to load every CT slice")


def _double_click_derived_series(browser: Browser, modality: str) -> None:
    """Double-click the study browser's thumbnail of the SEG or SR, as a reader loads it."""
    def thumbnail(b: Browser):
        for element in b.driver.find_elements(
                By.CSS_SELECTOR, '[data-cy="study-browser-thumbnail-no-image"]'):
            labels = element.find_elements(By.CSS_SELECTOR, '[data-cy="series-modality-label"]')
            if labels and labels[0].text.strip() == modality:
                return element
        return None
    ActionChains(browser.driver).double_click(
        browser.wait(thumbnail, 30, f"the {modality} thumbnail")).perform()


STATISTICS_CARD = """
const card = [...document.querySelectorAll('.segment-statistics-body')].map(
  body => body.closest('[data-state="open"]')).find(
  c => c && c.querySelector('h3') && c.querySelector('h3').textContent.trim() === arguments[0]);
if (!card) return null;
return Object.fromEntries([...card.querySelectorAll('.segment-statistics-body .flex')].map(
  row => [row.children[0].textContent.trim(), row.children[1].textContent.trim()]));
"""


def _segment_statistics_card(browser: Browser, label: str) -> dict[str, str]:
    """Hover the segment's row in the segmentation panel; the statistics card it opens."""
    rows = [row for row in browser.driver.find_elements(By.CSS_SELECTOR, '[data-cy="data-row"]')
            if [title.text.strip() for title in row.find_elements(
                By.CSS_SELECTOR, '[data-cy="data-row-title"]')] == [label]]
    assert rows, f"no row for {label!r} in the segmentation panel"
    ActionChains(browser.driver).move_to_element(rows[0]).perform()
    card = browser.wait(lambda b: b.js(STATISTICS_CARD, label), 15,
                        f"the statistics card of {label!r}")
    browser.shot(f"statistics-{label.split(',')[0].split()[0].lower()}")
    return card


def _number(text: str) -> float:
    """A number as OHIF's panel writes it (thousands separators, optional k/M suffix)."""
    text = text.replace(",", "").strip()
    scale = {"k": 1e3, "M": 1e6}.get(text[-1:], 1.0)
    return float(text.rstrip("kM")) * scale


def _to_fixed(value: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed, as OHIF formats an SR's numbers."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _errors_shown(browser: Browser) -> list[str]:
    """Console entries that mean the viewer broke: React error boundaries, uncaught errors."""
    return [e["message"] for e in browser.collect()
            if "Error Boundary" in e["message"] or "Uncaught" in e["message"]]


def _finding_types() -> dict[str, dicom_out.segments.FindingType]:
    """dicom_out's finding types (the SEG's segments), by segment label."""
    return {v.label: v for v in vars(dicom_out.segments).values()
            if isinstance(v, dicom_out.segments.FindingType)}


def _measurement_groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    imaging = [item for item in sr.ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == "126010"]  # Imaging Measurements
    return [item for item in imaging[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "125007"]  # Measurement Group


def test_ohif_shows_the_ct_and_hydrates_the_seg_with_its_names_colours_and_volumes(
        study, browser):
    _open_study(browser, study)
    browser.shot("ct")
    origin = study.viewer.url
    outside = browser.js("return performance.getEntriesByType('resource').map(e => e.name)"
                         ".filter(u => !u.startsWith(arguments[0]) && !/^(data|blob):/.test(u))",
                         origin)
    assert outside == [], f"the viewer fetched from outside its origin: {outside}"
    assert not study.viewer.proxy_errors, study.viewer.proxy_errors

    browser.js(RECORD_SEGMENTATION_EVENTS)
    _double_click_derived_series(browser, "SEG")
    yes = browser.wait(lambda b: b.driver.find_elements(
        By.CSS_SELECTOR, '[data-cy="yes-hydrate-btn"]'), 60, "the offer to load the SEG")
    browser.shot("seg-overlay")
    yes[0].click()
    # OHIF computes each segment's statistics (volume among them) once the labelmap is in.
    segmentations = browser.poll(_with_statistics, 45)
    if not segmentations:
        # OHIF computes them once, a second after the labelmap's data is set; under CPU
        # load that can run before the labelmap is ready, and nothing computes them again
        # until the segmentation is edited. Tell OHIF its data changed, as an edit does.
        browser.notes.append("segment statistics missing 45 s after loading the SEG; "
                             "SEGMENTATION_DATA_MODIFIED triggered again")
        browser.js(RECOMPUTE_STATISTICS)
        segmentations = browser.poll(_with_statistics, 45)
    assert segmentations, f"no segment statistics from OHIF: {browser.js(SEGMENTS)}"
    panel = browser.driver.find_elements(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]')
    if panel:
        panel[0].click()
    labels = [item.SegmentLabel for item in study.seg.SegmentSequence]
    browser.wait(lambda b: all(label in b.driver.find_element(By.TAG_NAME, "body").text
                               for label in labels), 30, "the segment names in the panel")
    browser.shot("seg-hydrated")
    assert not _errors_shown(browser), browser.console_text()
    # What the reader sees on hovering each segment: OHIF's statistics card, with the volume.
    cards = {label: _segment_statistics_card(browser, label) for label in labels}

    shown = {x["index"]: x for x in segmentations[0]["segments"]}
    assert sorted(shown) == [item.SegmentNumber for item in study.seg.SegmentSequence]
    types = _finding_types()
    for item in study.seg.SegmentSequence:
        segment = shown[item.SegmentNumber]
        assert segment["label"] == item.SegmentLabel
        finding = types[item.SegmentLabel.removesuffix(" (none detected)")]
        colour = segment["colour"][:3]
        assert all(abs(a - b) <= COLOUR_TOLERANCE for a, b in zip(colour, finding.rgb)), (
            f"{item.SegmentLabel}: OHIF shows {colour}, the SEG says {finding.rgb}")
        volume = segment["volume"]
        assert volume["unit"] == "mm³", volume
        expected_ml = study.findings["volumes_ml"][finding.key]
        assert volume["value"] / 1000 == pytest.approx(expected_ml, rel=VOLUME_TOLERANCE), (
            f"{item.SegmentLabel}: OHIF computes {volume['value'] / 1000:.3f} mL, "
            f"the report says {expected_ml} mL")
        shown_volume = cards[item.SegmentLabel].get("Volume", "")
        assert shown_volume.endswith(" mm³"), cards[item.SegmentLabel]
        assert _number(shown_volume.removesuffix(" mm³")) / 1000 == pytest.approx(
            expected_ml, rel=VOLUME_TOLERANCE), (
            f"{item.SegmentLabel}: OHIF's panel shows {shown_volume}, the report {expected_ml} mL")


def test_ohif_opens_the_sr_without_breaking_and_shows_its_measurements(study, browser):
    """OHIF 3.13 draws a TID 1500 measurement group on the CT only from a SCOORD/SCOORD3D
    it holds (at the group's top level, or INFERRED FROM by one of its NUMs), and breaks
    (route error boundary, blank viewport) on any group without one; it shows each group
    as its NUMs' "concept: value unit" lines (text items and coded evaluations are not
    shown): the crash is `measurement.coords[0].ReferencedSOPSequence` in the
    cornerstone-dicom-sr extension's _checkIfCanAddMeasurementsToDisplaySet."""
    _open_study(browser, study)
    _double_click_derived_series(browser, "SR")
    browser.wait(lambda b: _errors_shown(b) or (b.js(SR_STATE) or {}).get("isLoaded"),
                 60, "OHIF to load the SR")
    # The SR viewport then shows the CT at the first measurement, unless the viewer broke.
    browser.poll(lambda b: _errors_shown(b) or b.js(VIEWPORT_SHOWS_AN_IMAGE), 30)
    browser.shot("sr")
    errors = _errors_shown(browser)
    assert not errors, "opening the SR broke OHIF:\n" + "\n".join(errors)
    assert browser.js(VIEWPORT_SHOWS_AN_IMAGE), "the viewport is blank after opening the SR"

    state = browser.js(SR_STATE)
    groups = _measurement_groups(study.sr)
    assert len(state["measurements"]) == len(groups), state
    # Every measurement group is drawn on the CT (OHIF marks it loaded then).
    assert all(m["loaded"] is True for m in state["measurements"]), state
    # The segment groups state the report's volumes, as OHIF labels them.
    types = _finding_types()
    for m in state["measurements"]:
        finding = types.get(m["trackingIdentifier"])
        if finding is None:
            continue
        expected = f"{_to_fixed(study.findings['volumes_ml'][finding.key], 2)} cm3"
        assert {"label": "Volume", "value": expected} in m["labels"], m
    # The SR viewport steps through them; the next one shows without an error.
    arrows = browser.driver.find_elements(By.CSS_SELECTOR,
                                          '[data-cy="viewport-action-arrows-right"]')
    assert arrows, "no navigation between the SR's measurements"
    arrows[0].click()
    browser.poll(lambda b: _errors_shown(b) or b.js(CT_RENDERED), 30)
    browser.shot("sr-next-measurement")
    assert not _errors_shown(browser), browser.console_text()
    assert browser.js(VIEWPORT_SHOWS_AN_IMAGE)


SC_SHOWN = """
const s = window.services, cs = window.cornerstone;
const sc = s.displaySetService.getActiveDisplaySets().find(
  d => (d.SeriesDescription || '').includes(arguments[0]));
if (!sc) return null;
const shown = cs.getRenderingEngines().flatMap(e => e.getViewports())
  .map(v => v.getCurrentImageId()).filter(Boolean);
const ids = (sc.images || []).map(i => i.imageId);
return {images: ids.length, shown: shown.some(id => ids.includes(id))};
"""


def _double_click_series(browser: Browser, description: str) -> None:
    """Double-click the thumbnail whose series description has the text, as a reader does."""
    def thumbnail(b: Browser):
        for element in b.driver.find_elements(By.CSS_SELECTOR, '[data-cy^="study-browser-thumbnail"]'):
            if description in element.text:
                return element
        return None
    ActionChains(browser.driver).double_click(
        browser.wait(thumbnail, 30, f"the thumbnail of {description!r}")).perform()


def test_ohif_shows_the_summary_series_with_the_findings_burned_in(study, browser):
    """OHIF shows no text of a TID 1500 SR: the tier, recommendation and key slices reach
    its reader as the summary Secondary Capture series, which any viewer displays."""
    _open_study(browser, study)
    _double_click_series(browser, "key images")
    state = browser.wait(lambda b: (x := b.js(SC_SHOWN, "key images")) and x["shown"] and x, 60,
                         "OHIF to show the summary series")
    assert state["images"] >= 2  # the page of findings and at least one key slice
    browser.poll(lambda b: _errors_shown(b), 3)
    browser.shot("summary-page")
    assert not _errors_shown(browser), browser.console_text()


def test_ohif_shows_the_report_of_a_study_without_blood_as_text(study, browser):
    """With no blood there is nothing to point at: the SR is a text report (TID 2000),
    which OHIF shows as text, and opening it breaks nothing."""
    _open_study(browser, study, study.clean_uid)
    _double_click_derived_series(browser, "SR")
    text = browser.poll(lambda b: _errors_shown(b) or (
        "Risk tier: NONE" in (t := b.driver.find_element(By.TAG_NAME, "body").text) and t), 60)
    browser.shot("text-report")
    assert not _errors_shown(browser), "opening the text SR broke OHIF:\n" + browser.console_text()
    assert text and "Risk tier: NONE" in text, "OHIF does not show the report's impression"
    assert "RESEARCH USE ONLY" in text
    assert study.clean_findings["risk_tier"] == "none"
