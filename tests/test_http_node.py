"""End to end through `trauma-node serve`: a phantom sent with storescu, analysed by
the node, then questions over HTTP with the token the node generated at first start;
the conversation survives a restart of the node."""

from __future__ import annotations

import socket
import stat

import httpx
import pytest

from support.nodes import FAST, storescu, wait_for
from support.qa_support import BLEED, ask

PATIENT_NAME, PATIENT_ID = "PHANTOM^ABDOMEN", "PHANTOM-0001"  # tests/support/phantom.py


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_questions_about_a_received_study_end_to_end(node_factory, phantom_factory):
    truth = phantom_factory("qa-bleed", **BLEED)
    node = node_factory(FAST, env={"TRAUMA_NODE_API_TOKENS": ""})
    token_file = node.data_dir / "api_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert str(token_file) in node.log() and token not in node.log()
    auth = {"Authorization": f"Bearer {token}"}
    uid = truth.spec.study_uid

    with httpx.Client(timeout=30) as client:
        assert client.get(f"{node.url}/studies").status_code == 401
        storescu(truth.paths, node.dicom_port)

        def findings_ready():
            r = client.get(f"{node.url}/studies/{uid}/findings", headers=auth)
            assert r.status_code in (200, 404, 409), r.text
            return r.json() if r.status_code == 200 else None
        found = wait_for(findings_ready, timeout=90, interval=0.2, what="the study's Findings")
        findings = found["findings"]
        assert found["series_uid"] == truth.spec.series_uid
        assert findings["volumes_ml"]["hemorrhage"] > 0

        text, done, _ = ask(client, node.url, uid, "How much blood is there?", headers=auth)
        assert f"{findings['volumes_ml']['hemorrhage']:.1f} mL" in text
        follow, _, _ = ask(client, node.url, uid, "Is the spleen injured?", headers=auth)
        assert follow.startswith("Spleen:")
        report = client.get(f"{node.url}/studies/{uid}/report", headers=auth).json()["report"]
        assert report == findings["report"]

        address = _non_loopback_address()
        if address is not None:  # the API listens on loopback only
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{address}:{node.http_port}/healthz", timeout=2)

    node.stop()
    node.start()
    assert token_file.read_text().strip() == token  # kept, not regenerated
    with httpx.Client(timeout=30) as client:
        messages = client.get(f"{node.url}/studies/{uid}/conversation",
                              headers=auth).json()["messages"]
        assert [m["text"] for m in messages] == ["How much blood is there?", text,
                                                 "Is the spleen injured?", follow]
        assert messages[1]["id"] == done["message_id"]
        again, _, _ = ask(client, node.url, uid, "What grade is it?", headers=auth)
        assert again.startswith("(Following on from your earlier question about the spleen.)")
        assert "AAST grade at least" in again

    log = node.log()
    for secret in (PATIENT_NAME, PATIENT_ID, "How much blood is there?", token):
        assert secret not in log
