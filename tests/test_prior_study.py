"""The prior study, end to end: Orthanc as the PACS holds the patient's earlier CT (a
smaller bleed); the node receives the new one, finds the prior by C-FIND, has it C-MOVEd
to itself, analyses it, and reports the interval change in the SR, the report and the
Q&A. A PACS that cannot be asked leaves the result as it was, and the report says so."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Callable

import highdicom as hd
import httpx
import pydicom
import pytest

from pipeline import PipelineSettings, run_series
from support.nodes import AUTH, FAST, free_port, storescu, wait_for
from support.orthanc import Orthanc
from support.qa_support import ask
from test_dicom_out_objects import _dciodvfy_problems

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PATIENT_NAME, PATIENT_ID = "PHANTOM^ABDOMEN", "PHANTOM-0001"  # tests/support/phantom.py
# A whole abdomen in a coarse field of view (the e2e tests' small series).
COARSE = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125))


def prior_config(pacs_ae: str, pacs_port: int, wait_s: float = 90, workers: int = 2) -> str:
    # Two workers: the prior is analysed while the new study's job waits for it.
    return FAST + f"""
[workers]
count = {workers}
[prior]
enabled = true
ae_title = "{pacs_ae}"
host = "127.0.0.1"
port = {pacs_port}
lookback_days = 365
timeout_s = 30
wait_s = {wait_s}
poll_interval_s = 0.2
"""


def dated_copy(paths: list[Path], out: Path, days_ago: int) -> list[Path]:
    """The series as if acquired days_ago before it was: the same patient's earlier study."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        ds = pydicom.dcmread(path)
        date = (dt.datetime.strptime(ds.StudyDate, "%Y%m%d")
                - dt.timedelta(days=days_ago)).strftime("%Y%m%d")
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.save_as(out / path.name)
        copies.append(out / path.name)
    return copies


@contextlib.contextmanager
def prior_in_the_pacs(node_factory, phantom_factory, tmp_path: Path,
                      config_of: Callable[[int], str] | None = None,
                      prepare: Callable[[list[Path]], list[Path]] = lambda paths: paths,
                      **config):
    """Orthanc holding the patient's CT of 30 days before (a small bleed; its files through
    prepare), a node set to look priors up in it (config_of(PACS port), else prior_config
    with **config), and the new study (a large bleed) sent to the node: yields (node,
    prior truth, current truth, Orthanc); Orthanc stops after."""
    prior_truth = phantom_factory("prior-then", **COARSE, blood="small")
    current_truth = phantom_factory("prior-now", **COARSE, blood="large")
    prior_files = prepare(dated_copy(prior_truth.paths, tmp_path / "prior", days_ago=30))
    pacs_port = free_port()
    node = node_factory(config_of(pacs_port) if config_of else
                        prior_config("PACS", pacs_port, **config), start=False)
    pacs = Orthanc(tmp_path / "orthanc", pacs_port, free_port(),
                   modalities={"trauma": ["TRAUMA_AI", "127.0.0.1", node.dicom_port]}).start()
    try:
        for path in prior_files:
            pacs.upload(path)
        node.start()
        storescu([current_truth.paths[0].parent], node.dicom_port)
        yield node, prior_truth, current_truth, pacs
    finally:
        pacs.stop()


def findings_of(client: httpx.Client, node, study_uid: str, timeout: float = 150) -> dict:
    def ready():
        r = client.get(f"{node.url}/studies/{study_uid}/findings", headers=AUTH)
        return r.json()["findings"] if r.status_code == 200 else None
    return wait_for(ready, timeout=timeout, interval=0.3, what=f"the Findings of {study_uid}")


def sr_of(node, study_uid: str) -> Path:
    for path in sorted(node.data_dir.rglob("*.dcm")):
        if study_uid in str(path) and "spool" not in path.parts:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPClassUID == COMPREHENSIVE_3D_SR:
                return path
    raise AssertionError(f"no SR written for {study_uid}")


def _texts(items):
    for item in items:
        if item.ValueType == "TEXT":
            yield item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue
        yield from _texts(getattr(item, "ContentSequence", []))


def test_the_interval_change_since_the_prior_in_the_pacs(node_factory, phantom_factory, tmp_path):
    with prior_in_the_pacs(node_factory, phantom_factory, tmp_path) as (
            node, prior_truth, current_truth, _), httpx.Client(timeout=30) as client:
        now = findings_of(client, node, current_truth.spec.study_uid)
        then = findings_of(client, node, prior_truth.spec.study_uid, timeout=30)
        text, _, _ = ask(client, node.url, current_truth.spec.study_uid,
                         "How has the bleeding changed since the prior?", headers=AUTH)
    then_ml, now_ml = then["volumes_ml"]["hemorrhage"], now["volumes_ml"]["hemorrhage"]
    assert 0 < then_ml < now_ml
    change = now["interval"]
    assert change["compared"] and change["prior_study_uid"] == prior_truth.spec.study_uid
    assert change["hemorrhage_ml"] == {"prior": round(then_ml, 1), "current": round(now_ml, 1),
                                       "change": round(round(now_ml, 1) - round(then_ml, 1), 1)}
    assert change["new"] and not change["resolved"]  # the large bleed adds collections
    assert then.get("interval") == {}  # the prior is not compared itself
    volumes = f"{now_ml:.1f} mL now versus {then_ml:.1f} mL then"
    assert volumes in now["report"] and volumes in text  # the report and the Q&A

    sr_path = sr_of(node, current_truth.spec.study_uid)
    texts = dict(_texts(hd.sr.srread(sr_path).ContentSequence))
    assert volumes in texts["Comparison to previous studies"]
    errors, _ = _dciodvfy_problems(sr_path)
    assert errors == []
    log = node.log()
    assert "retrieved" in log
    for secret in (PATIENT_NAME, PATIENT_ID):
        assert secret not in log


@pytest.mark.parametrize("pacs_holds, said", [
    (None, "none made (the PACS PACS refused or did not answer"),  # nothing listens
    ("nothing", "none made (none in the PACS within 365 days)"),
])
def test_no_prior_leaves_the_result_and_says_so(node_factory, phantom_factory, tmp_path,
                                                pacs_holds, said):
    truth = phantom_factory("prior-now", **COARSE, blood="large")
    pacs_port = free_port()
    node = node_factory(prior_config("PACS", pacs_port), start=False)
    pacs = None
    if pacs_holds is not None:
        pacs = Orthanc(tmp_path / "orthanc", pacs_port, free_port(),
                       modalities={"trauma": ["TRAUMA_AI", "127.0.0.1", node.dicom_port]}).start()
    try:
        node.start()
        storescu([truth.paths[0].parent], node.dicom_port)
        with httpx.Client(timeout=30) as client:
            now = findings_of(client, node, truth.spec.study_uid)
            report = client.get(f"{node.url}/studies/{truth.spec.study_uid}/report",
                                headers=AUTH).json()["report"]
    finally:
        if pacs is not None:
            pacs.stop()
    alone = run_series(truth.paths, PipelineSettings())  # as if there were no lookup
    assert now["volumes_ml"] == alone.volumes_ml and now["risk_tier"] == alone.risk_tier
    assert now["report"].startswith(alone.report.rstrip())
    assert now["interval"]["compared"] is False
    assert f"Comparison with a prior study: {said}" in report
    assert PATIENT_ID not in node.log()


def test_an_enabled_lookup_needs_a_pacs_to_ask(tmp_path):
    from node.config import load_settings
    from node.settings_loader import ConfigError

    path = tmp_path / "node.toml"
    path.write_text("[prior]\nenabled = true\nae_title = \"BAD\\\\AE\"\nlookback_days = 0\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, env={})
    said = "\n".join(error.value.problems)
    for key in ("prior.ae_title", "prior.host", "prior.lookback_days"):
        assert key in said
    path.write_text("[prior]\nenabled = false\n")  # off: nothing else is asked for
    assert load_settings(path, env={}).prior.enabled is False


def test_one_worker_never_holds_the_result_for_its_prior(node_factory, phantom_factory,
                                                         tmp_path):
    """The only worker must not wait for a prior it would have to analyse itself: the new
    study's result comes at once, compared if the prior happened to be analysed first,
    else saying that it was retrieved but not yet analysed."""
    with prior_in_the_pacs(node_factory, phantom_factory, tmp_path, wait_s=600, workers=1) as (
            node, prior_truth, current_truth, _), httpx.Client(timeout=30) as client:
        now = findings_of(client, node, current_truth.spec.study_uid, timeout=120)
        findings_of(client, node, prior_truth.spec.study_uid, timeout=60)
    statement = now["interval"]["statement"]
    assert now["interval"]["compared"] or "retrieved but not yet analysed" in statement
