"""docs/conformance.md against the code: its tables are parsed and compared with what the
SCP registers, what dicom_out builds and the SCU proposes, the network defaults and TLS."""

from __future__ import annotations

import datetime as dt
import re
import ssl

import pydicom
import pytest
from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from support.nodes import ROOT
from dicom_out import KINDS, build_outputs
from dicom_out.outputs import STUDY_KINDS
from dicom_out.verdict_sr import Assessment, build_verdict_sr
from node.config import STUDY_KINDS as CONFIG_STUDY_KINDS
from node.config import NetworkSection, TLSSection, load_settings
from node.dicom.scp import TRANSFER_SYNTAXES, StorageSCP
from node.dicom.tls import client_context
from pipeline import PipelineSettings, run_series

DOC = (ROOT / "docs" / "conformance.md").read_text()
SMALL = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.0, 3.0), slice_spacing=5.0)


def table(heading: str) -> list[list[str]]:
    """The rows (cells, backticks stripped) of the first table after a heading line."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip() == heading)
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("- "):
                rows.append(cells)
        elif seen:
            break
    return rows[1:]  # without the header


@pytest.fixture(scope="module")
def scp_ae(tmp_path_factory):
    settings = load_settings("/dev/null", env={}, overrides={
        "node.data_dir": str(tmp_path_factory.mktemp("conformance"))})
    return StorageSCP(settings, receiver=None, policy=None).ae


@pytest.fixture(scope="module")
def sent(phantom_factory) -> dict[str, set[tuple[str, str]]]:
    """kind -> {(SOP Class UID, transfer syntax)} of what dicom_out builds, for a study with
    blood and one without; and the character sets, under "charsets"."""
    found: dict[str, set] = {kind: set() for kind in KINDS + STUDY_KINDS}
    found["charsets"], found["verdict charsets"] = set(), set()
    for name, spec in (("conformance_bleed", dict(blood="large", blush=True)),
                       ("conformance_clean", dict(blood="none"))):
        truth = phantom_factory(name, **SMALL, **spec)
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in truth.paths]
        outputs = build_outputs(run_series(truth.paths, PipelineSettings()), sources,
                                series_version=1, algorithm_name="conformance",
                                algorithm_version="1")
        by_kind = outputs.by_kind()
        by_kind["verdict"] = [_a_verdict_sr(outputs.sr)]  # a reader's verdict on this result
        for kind, objects in by_kind.items():
            for ds in objects:
                found[kind].add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
                if kind == "verdict":  # readers' names and notes: UTF-8
                    found["verdict charsets"].add(str(ds.SpecificCharacterSet))
                elif "SpecificCharacterSet" in ds:
                    found["charsets"].add((str(ds.SpecificCharacterSet),
                                           str(sources[0].get("SpecificCharacterSet"))))
    return found


def _a_verdict_sr(ai_sr: pydicom.Dataset) -> pydicom.Dataset:
    verdict = Assessment("risk_tier", "Risk tier", "high", "accepted", "reader", "Reader^A",
                         dt.datetime(2026, 11, 30, 12, 0), str(ai_sr.SOPInstanceUID), verdict_id=1)
    return build_verdict_sr([ai_sr], [verdict], node_name="conformance", node_version="1")


def test_the_scp_sop_classes_are_those_the_scp_registers(scp_ae):
    documented = {uid for _, uid in table("4.2.1.3.1 SOP classes accepted (SCP)")}
    registered = {str(cx.abstract_syntax) for cx in scp_ae.supported_contexts}
    assert documented | {Verification} == registered


def test_the_scp_transfer_syntaxes_in_their_order(scp_ae):
    rows = table("Transfer syntaxes accepted (SCP)")
    assert [uid for _, _, uid in rows] == [str(ts) for ts in TRANSFER_SYNTAXES]
    assert [int(n) for n, _, _ in rows] == list(range(1, len(rows) + 1))
    for cx in scp_ae.supported_contexts:
        expected = DEFAULT_TRANSFER_SYNTAXES if cx.abstract_syntax == Verification else TRANSFER_SYNTAXES
        assert [str(t) for t in cx.transfer_syntax] == [str(t) for t in expected]


def test_the_scu_sop_classes_are_what_dicom_out_builds(sent):
    rows = table("4.2.2.3.1 SOP classes sent (SCU)")
    documented = {(kind, (uid, ts)) for _, uid, ts, kind in rows}
    built = {(kind, pair) for kind in KINDS + STUDY_KINDS for pair in sent[kind]}
    assert documented == built
    assert {kind for _, _, _, kind in rows} == set(KINDS + STUDY_KINDS)
    assert STUDY_KINDS == CONFIG_STUDY_KINDS  # what a destination's objects may name
    assert "1.2.840.10008.5.1.4.1.1.88.11" not in {uid for _, uid, _, _ in rows}  # Basic Text SR


def test_the_objects_sent_keep_the_source_character_set(sent):
    assert sent["charsets"] and all(out == source for out, source in sent["charsets"])
    assert "copy the Specific Character Set of the source series" in DOC
    assert sent["verdict charsets"] == {"ISO_IR 192"} and "verdict SR is UTF-8" in DOC


def test_the_query_and_echo_scu_contexts():
    rows = {uid: [t.strip().strip("`") for t in syntaxes.split(",")]
            for _, uid, syntaxes in table("Query SOP classes and transfer syntaxes (SCU)")}
    defaults = [str(t) for t in DEFAULT_TRANSFER_SYNTAXES]
    assert rows == {StudyRootQueryRetrieveInformationModelFind: defaults,
                    StudyRootQueryRetrieveInformationModelMove: defaults, Verification: defaults}
    source = (ROOT / "node" / "dicom" / "scu.py").read_text()
    assert "ae.add_requested_context(model)" in source  # default syntaxes, as documented
    prior = (ROOT / "node" / "prior" / "query.py").read_text()
    assert "ae.add_requested_context(self.model)" in prior  # C-FIND and C-MOVE of the prior
    assert "ae.add_requested_context(Verification)" in source


def test_the_association_defaults():
    rows = {key.removeprefix("network."): value for key, value, _ in
            table("4.2.1.2 Association policies")}
    defaults = NetworkSection()
    assert rows == {name: str(getattr(defaults, name)) for name in rows}
    assert set(rows) == set(vars(defaults))


def test_the_tls_settings():
    rows = dict((k, v) for k, v in table("7.1 Security profiles"))
    context = client_context(TLSSection())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert rows["minimum protocol version"] == context.minimum_version.name.replace("_", ".")
    # the server's context too (node.dicom.tls.server_context needs certificate files)
    assert (ROOT / "node" / "dicom" / "tls.py").read_text().count(
        "minimum_version = ssl.TLSVersion.TLSv1_2") == 2
    assert re.search(r"ssl\.create_default_context", (ROOT / "node" / "dicom" / "tls.py").read_text())
    assert "set_ciphers" not in (ROOT / "node" / "dicom" / "tls.py").read_text()  # the defaults
