"""The radiologist's verdict over the HTTP API (node.http.verdicts, node.store.verdicts): who
and when are recorded, a later verdict supersedes with the history kept, only a reader's own
account may judge, the JSON exports, the agreement per finding type, backend version and
time bucket, and the audit trail."""

from __future__ import annotations

import copy
import datetime as dt

import httpx
import pytest
from sqlalchemy import update

from support.nodes import AUTH
from support.qa_support import findings_dict, insert_study
from support.verdict_support import AuditedApi

from node.store import readers
from node.store import verdicts as store
from node.store.tables import Verdict


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path):
    with AuditedApi(tmp_path / "data") as server:
        yield server


@pytest.fixture
def client(api):
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


def test_a_verdict_records_who_and_when_and_a_later_one_supersedes(api, client):
    uid = insert_study(api.index, findings_dict("bleed"))
    _, alice = readers.add(api.index, "alice", "Dr Alice Example")
    _, bob = readers.add(api.index, "bob", "Dr Bob Example")
    view = client.get(f"/studies/{uid}/verdicts", headers=bearer(alice)).json()
    keys = [f["key"] for f in view["findings"]]
    assert keys[:2] == ["hemorrhage", "active_extravasation"] and "organ/spleen" in keys
    assert keys[-1] == "risk_tier"
    spleen = next(f for f in view["findings"] if f["key"] == "organ/spleen")
    assert spleen["type"] == "organ_injury" and spleen["ai_value"].startswith("injured, AAST grade ≥ 4")
    blood = next(f for f in view["findings"] if f["key"] == "hemorrhage")
    assert blood["ai_volume_ml"] == pytest.approx(findings_dict("bleed")["volumes_ml"]["hemorrhage"])
    assert (blood["backend"], blood["backend_version"]) == ("hu-baseline", next(
        s["version"] for s in findings_dict("bleed")["provenance"]["stages"]
        if s["stage"] == "segmentation"))

    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    first = client.post(f"/studies/{uid}/verdicts", headers=bearer(alice), json={
        "finding": "hemorrhage", "verdict": "corrected", "corrected_volume_ml": 70.5,
        "note": "part of it is bowel content", "job_id": view["job_id"]})
    assert first.status_code == 201, first.text
    saved = first.json()
    assert saved["reader"] == "alice" and saved["reader_display_name"] == "Dr Alice Example"
    assert saved["verdict"] == "corrected" and saved["corrected_volume_ml"] == 70.5
    when = dt.datetime.fromisoformat(saved["created_at"].rstrip("Z"))
    assert before <= when <= dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert saved["superseded"] == [] and saved["current"]

    bobs = client.post(f"/studies/{uid}/verdicts", headers=bearer(bob),
                       json={"finding": "hemorrhage", "verdict": "accepted"}).json()
    second = client.post(f"/studies/{uid}/verdicts", headers=bearer(alice),
                         json={"finding": "hemorrhage", "verdict": "accepted"}).json()
    assert second["superseded"] == [saved["id"]]  # hers only: Bob's stands beside it

    view = client.get(f"/studies/{uid}/verdicts", headers=bearer(alice)).json()
    blood = next(f for f in view["findings"] if f["key"] == "hemorrhage")
    assert {(v["reader"], v["verdict"]) for v in blood["verdicts"]} == {("alice", "accepted"),
                                                                     ("bob", "accepted")}
    assert blood["mine"]["id"] == second["id"]
    history = {v["id"]: v for v in view["verdicts"]}
    assert set(history) == {saved["id"], bobs["id"], second["id"]}
    assert history[saved["id"]]["current"] is False
    assert history[saved["id"]]["superseded_by"] == second["id"]
    assert history[saved["id"]]["note"] == "part of it is bowel content"


def test_only_a_readers_account_may_judge_and_bad_input_is_refused(api, client):
    uid = insert_study(api.index, findings_dict("bleed"))
    _, alice = readers.add(api.index, "alice")
    url = f"/studies/{uid}/verdicts"
    ok = {"finding": "organ/spleen", "verdict": "accepted"}
    assert client.post(url, json=ok).status_code == 401
    assert client.post(url, headers=bearer("not-a-token-at-all"), json=ok).status_code == 401
    service = client.post(url, headers=AUTH, json=ok)
    assert service.status_code == 403 and "reader's own account" in service.json()["detail"]
    # reading them is fine with a service token
    assert client.get(url, headers=AUTH).status_code == 200

    def refused(body, status=422, **kw) -> str:
        r = client.post(kw.get("url", url), headers=bearer(alice),
                        **({"content": body} if isinstance(body, bytes) else {"json": body}))
        assert r.status_code == status, (body, r.text)
        return r.json()["detail"]

    assert "not valid JSON" in refused(b"{nope")
    assert "JSON object" in refused(["hemorrhage"])
    assert "unknown field" in refused({**ok, "reader": "mallory"})
    assert "verdict: one of accepted" in refused({**ok, "verdict": "maybe"})
    assert "not one of this analysis" in refused({**ok, "finding": "organ/heart"})
    assert "corrected volume" in refused({"finding": "hemorrhage", "verdict": "corrected"})
    assert "only with the verdict 'corrected'" in refused(
        {"finding": "hemorrhage", "verdict": "accepted", "corrected_volume_ml": 3})
    assert "from 0 to" in refused({"finding": "hemorrhage", "verdict": "corrected",
                                   "corrected_volume_ml": -1})
    assert "not a volume" in refused({"finding": "risk_tier", "verdict": "corrected",
                                      "corrected_volume_ml": 5})
    assert "a number" in refused({"finding": "hemorrhage", "verdict": "corrected",
                                  "corrected_volume_ml": "80"})
    assert "at most 2000" in refused({**ok, "note": "x" * 2001})
    assert "no longer the study's latest" in refused({**ok, "job_id": 999}, 409)
    assert "not a DICOM UID" in refused(ok, url="/studies/1.2.x/verdicts")
    assert "unknown study" in refused(ok, 404, url="/studies/1.2.3.4/verdicts")
    waiting = insert_study(api.index, None, job_state="running")
    assert "no Findings" in refused(ok, 409, url=f"/studies/{waiting}/verdicts")
    # a correction of a finding without a volume says what is right in its note
    assert client.post(url, headers=bearer(alice), json={
        "finding": "risk_tier", "verdict": "corrected", "note": "moderate"}).status_code == 201
    assert len(store.for_study(api.index, uid)) == 1


def test_json_exports_and_the_audit_trail(api, client):
    first = insert_study(api.index, findings_dict("bleed"))
    second = insert_study(api.index, findings_dict("clean"))
    _, alice = readers.add(api.index, "alice", "Dr Alice Example")
    posted = [client.post(f"/studies/{uid}/verdicts", headers=bearer(alice), json=body).json()
              for uid, body in [
                  (first, {"finding": "organ/spleen", "verdict": "accepted"}),
                  (first, {"finding": "hemorrhage", "verdict": "corrected",
                           "corrected_volume_ml": 50, "note": "secret clinical note"}),
                  (first, {"finding": "hemorrhage", "verdict": "accepted"}),
                  (second, {"finding": "risk_tier", "verdict": "rejected"})]]
    one = client.get(f"/studies/{first}/verdicts.json", headers=AUTH)
    assert one.status_code == 200 and "attachment" in one.headers["content-disposition"]
    doc = one.json()
    assert doc["study_uid"] == first and doc["count"] == 3 and doc["exported_by"] == "token-1"
    assert [(v["finding_key"], v["verdict"], v["current"]) for v in doc["verdicts"]] == [
        ("organ/spleen", "accepted", True), ("hemorrhage", "corrected", False),
        ("hemorrhage", "accepted", True)]
    assert all(v["reader"] == "alice" and v["created_at"].endswith("Z") for v in doc["verdicts"])

    everything = client.get("/verdicts/export", headers=bearer(alice)).json()
    assert [v["id"] for v in everything["verdicts"]] == [p["id"] for p in posted]
    assert {v["study_uid"] for v in everything["verdicts"]} == {first, second}
    tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).date().isoformat()
    assert client.get(f"/verdicts/export?since={tomorrow}", headers=AUTH).json()["count"] == 0
    assert client.get(f"/verdicts/export?until={tomorrow}", headers=AUTH).json()["count"] == 4
    bad = client.get("/verdicts/export?since=last-week", headers=AUTH)
    assert bad.status_code == 422 and "since" in bad.json()["detail"]

    lines = api.audit_lines()
    records = [line for line in lines if 'csd-code="110110"' in line]
    assert len(records) == 4
    assert all('UserID="alice"' in line for line in records)
    assert sum('EventActionCode="U"' in line for line in records) == 1  # the superseding one
    assert sum(f'ParticipantObjectID="{first}"' in line for line in records) == 3
    exports = [line for line in lines if 'csd-code="110106"' in line]
    assert len(exports) == 3  # the study's, alice's of all, and until tomorrow (not the empty one)
    assert 'UserID="token-1"' in exports[0] and f'ParticipantObjectID="{first}"' in exports[0]
    assert 'UserID="alice"' in exports[1] and f'ParticipantObjectID="{second}"' in exports[1]
    assert 'UserID="token-1"' in exports[2]
    assert not any("secret clinical note" in line for line in lines)


def _findings_with_segmentation(version: str) -> dict:
    found = copy.deepcopy(findings_dict("bleed"))
    for stage in found["provenance"]["stages"]:
        if stage["stage"] == "segmentation":
            stage["version"] = version
    return found


def test_agreement_per_finding_type_backend_version_and_week(api, client):
    """Two backend versions, two weeks: the figures follow from the stored verdicts."""
    _, alice = readers.add(api.index, "alice")
    _, bob = readers.add(api.index, "bob")
    old = [insert_study(api.index, _findings_with_segmentation("1.3")) for _ in range(2)]
    new = [insert_study(api.index, _findings_with_segmentation("2.0")) for _ in range(2)]
    ai_blood = findings_dict("bleed")["volumes_ml"]["hemorrhage"]
    plan = [  # (study, reader, finding, verdict, corrected mL, week)
        (old[0], alice, "hemorrhage", "accepted", None, 0),
        (old[0], bob, "hemorrhage", "corrected", 60.0, 0),
        (old[1], alice, "hemorrhage", "rejected", None, 0),
        (old[1], alice, "organ/spleen", "accepted", None, 0),
        (new[0], alice, "hemorrhage", "accepted", None, 1),
        (new[0], bob, "hemorrhage", "accepted", None, 1),
        (new[1], alice, "hemorrhage", "corrected", 100.0, 1),
        (new[1], alice, "organ/spleen", "rejected", None, 1),
    ]
    monday = dt.datetime(2026, 11, 9, 10, 0)  # a Monday; week 1 starts on the 16th
    for i, (uid, token, finding, verdict, ml, week) in enumerate(plan):
        body = {"finding": finding, "verdict": verdict}
        if ml is not None:
            body["corrected_volume_ml"] = ml
        saved = client.post(f"/studies/{uid}/verdicts", headers=bearer(token), json=body)
        assert saved.status_code == 201, saved.text
        with api.index.session() as session, session.begin():
            session.execute(update(Verdict).where(Verdict.id == saved.json()["id"]).values(
                created_at=monday + dt.timedelta(days=7 * week + i % 3, hours=i)))
    # a superseded verdict does not count: alice first rejected old[0]'s spleen, then accepted it
    client.post(f"/studies/{old[0]}/verdicts", headers=bearer(alice),
                json={"finding": "organ/spleen", "verdict": "rejected"})
    client.post(f"/studies/{old[0]}/verdicts", headers=bearer(alice),
                json={"finding": "organ/spleen", "verdict": "accepted"})
    # ...made today, outside the two weeks: counted only without a date range

    got = client.get("/verdicts/agreement?by=week&since=2026-11-09&until=2026-11-23",
                     headers=AUTH)
    assert got.status_code == 200, got.text
    data = got.json()
    blood = {(r["bucket"], r["backend"]): r for r in data["series"]
             if r["finding_type"] == "hemorrhage"}
    assert set(blood) == {("2026-11-09", "hu-baseline 1.3"), ("2026-11-16", "hu-baseline 2.0")}
    week0, week1 = blood[("2026-11-09", "hu-baseline 1.3")], blood[("2026-11-16", "hu-baseline 2.0")]
    assert (week0["judged"], week0["accepted"], week0["rejected"], week0["corrected"]) == (3, 1, 1, 1)
    assert week0["agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert week0["mean_abs_volume_difference_ml"] == pytest.approx(abs(ai_blood - 60.0), abs=1e-3)
    assert (week1["judged"], week1["accepted"], week1["corrected"]) == (3, 2, 1)
    assert week1["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert week1["mean_abs_volume_difference_ml"] == pytest.approx(abs(ai_blood - 100.0), abs=1e-3)
    organs = {r["bucket"]: r for r in data["series"] if r["finding_type"] == "organ_injury"}
    assert organs["2026-11-09"]["agreement"] == 1.0 and organs["2026-11-16"]["agreement"] == 0.0
    assert organs["2026-11-09"]["backend"].startswith("rule-table ")
    by_type = {r["finding_type"]: r for r in data["by_finding_type"]}
    assert by_type["hemorrhage"]["judged"] == 6 and by_type["hemorrhage"]["agreement"] == 0.5
    assert by_type["hemorrhage"]["mean_abs_volume_difference_ml"] == pytest.approx(
        (abs(ai_blood - 60) + abs(ai_blood - 100)) / 2, abs=1e-3)
    by_backend = {(r["finding_type"], r["backend"]): r["agreement"] for r in data["by_backend"]}
    assert by_backend[("hemorrhage", "hu-baseline 1.3")] == pytest.approx(1 / 3, abs=1e-4)
    assert by_backend[("hemorrhage", "hu-baseline 2.0")] == pytest.approx(2 / 3, abs=1e-4)
    assert data["overall"]["judged"] == 8 and data["overall"]["accepted"] == 4

    everything = client.get("/verdicts/agreement?by=month", headers=AUTH).json()
    assert everything["overall"]["judged"] == 9  # today's spleen verdict on old[0], current one
    assert {r["bucket"] for r in everything["series"]} >= {"2026-11-01"}
    days = client.get("/verdicts/agreement?by=day&since=2026-11-09&until=2026-11-23",
                      headers=AUTH).json()
    assert sum(r["judged"] for r in days["series"]) == 8 and len(
        {r["bucket"] for r in days["series"]}) > 2
    assert client.get("/verdicts/agreement?by=year", headers=AUTH).status_code == 422
    assert client.get("/verdicts/agreement").status_code == 401
