"""The HTTP API through a real client against uvicorn: auth, studies, Findings, Q&A
streamed as Server-Sent Events, multi-turn, restarts, concurrency, errors, logs."""

from __future__ import annotations

import json
import re
import logging
import stat
import threading
import time

import httpx
import pytest

from support.nodes import API_TOKEN, AUTH
from support.qa_support import ApiServer, SlowAnswerer, ask, findings_dict, insert_study, sse_events
from node.store import outbox
from node.config import Settings, load_settings
from pipeline.answering import GroundedAnswerer, Question
from pipeline.findings import Findings

UNKNOWN = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def api(tmp_path):
    with ApiServer(tmp_path / "data") as server:
        yield server


@pytest.fixture
def client():
    with httpx.Client(timeout=30) as c:
        yield c


def _protected(uid: str) -> list[tuple[str, str]]:
    return [("GET", "/studies"), ("GET", "/studies?summary=true"), ("GET", f"/studies/{uid}"),
            ("GET", f"/studies/{uid}/findings"), ("GET", f"/studies/{uid}/report"),
            ("GET", f"/studies/{uid}/deliveries"), ("GET", f"/studies/{uid}/conversation"),
            ("POST", f"/studies/{uid}/questions"), ("GET", "/openapi.json")]


def test_health_and_the_page_need_no_token(api, client):
    assert client.get(f"{api.url}/healthz").json()["status"] == "ok"
    page = client.get(f"{api.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    for asset in ("app.js", "style.css", "index.html"):
        assert client.get(f"{api.url}/static/{asset}").status_code == 200
    assert client.get(f"{api.url}/docs").status_code == 404  # no Swagger UI from a CDN


def test_every_other_endpoint_needs_a_bearer_token(api, client):
    uid = insert_study(api.index, findings_dict("bleed"))
    for method, path in _protected(uid):
        for headers, error in (({}, None), ({"Authorization": f"Basic {API_TOKEN}"}, None),
                               ({"Authorization": "Bearer"}, None),
                               ({"Authorization": "Bearer wrong-token-0123456789"}, "invalid_token"),
                               ({"Authorization": f"Bearer {API_TOKEN}x"}, "invalid_token")):
            # A malformed body without a token is still a 401, not a 422.
            r = client.request(method, f"{api.url}{path}", headers=headers,
                               json={"nope": 1} if method == "POST" else None)
            assert r.status_code == 401, (method, path, headers, r.text)
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="trauma-node"'), challenge
            assert ('error="invalid_token"' in challenge) == (error is not None)
            assert "detail" in r.json()
        if method == "GET":
            assert client.get(f"{api.url}{path}", headers=AUTH).status_code == 200, path


def test_any_configured_token_is_accepted(tmp_path, client):
    tokens = ["first-token-0123456789", "second-token-0123456789"]
    with ApiServer(tmp_path / "data", tokens=tokens) as api:
        for token in tokens:
            r = client.get(f"{api.url}/studies", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
        assert client.get(f"{api.url}/studies", headers=AUTH).status_code == 401


def test_a_token_is_generated_at_first_start_and_kept(tmp_path, client, caplog):
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    with ApiServer(data, tokens=None) as api:
        path = data / "api_token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert len(token) >= 32
        assert str(path) in caplog.text and token not in caplog.text
        r = client.get(f"{api.url}/studies", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    with ApiServer(data, tokens=None) as api:  # the next start reads it back
        assert path.read_text().strip() == token
        r = client.get(f"{api.url}/studies", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    assert token not in caplog.text


def test_the_http_server_binds_to_loopback_unless_configured():
    assert Settings().node.http_bind == "127.0.0.1"
    assert load_settings(env={}).node.http_bind == "127.0.0.1"  # config/node.toml
    assert load_settings(env={"TRAUMA_NODE_HTTP_BIND": "0.0.0.0"}).node.http_bind == "0.0.0.0"


def test_unknown_study_is_404_everywhere(api, client):
    insert_study(api.index, findings_dict("bleed"))
    for method, path in _protected(UNKNOWN)[2:-1]:
        r = client.request(method, f"{api.url}{path}", headers=AUTH,
                           json={"question": "How much blood?"} if method == "POST" else None)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["detail"] == f"unknown study {UNKNOWN}"


@pytest.mark.parametrize("kwargs, message", [
    ({"json": {}}, 'question: required: send {"question": "..."}'),
    ({"json": {"question": "   "}}, "question: the question must not be empty"),
    ({"json": {"question": "x" * 2001}}, "question: the question is too long (2001 characters"),
    ({"json": {"question": 42}}, "question: Input should be a valid string"),
    ({"json": ["question"]}, 'body: expected a JSON object such as {"question": "..."}'),
    ({"json": {"question": "ok?", "hemodynamic_status": "shock"}},
     "hemodynamic_status: Input should be 'stable', 'unstable' or 'unknown'"),
    ({"json": {"question": "ok?", "patient": "x"}}, "patient: unknown field"),
    ({"content": b'{"question": ', "headers": {"Content-Type": "application/json"}},
     "body: not valid JSON"),
])
def test_malformed_questions_are_422_with_a_clear_message(api, client, kwargs, message):
    uid = insert_study(api.index, findings_dict("bleed"))
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = client.post(f"{api.url}/studies/{uid}/questions", headers=headers, **kwargs)
    assert r.status_code == 422
    assert message in r.json()["detail"], r.json()
    assert client.get(f"{api.url}/studies/{uid}/conversation",
                      headers=AUTH).json()["messages"] == []


def test_a_malformed_study_uid_is_422(api, client):
    for uid in ("abc", "1..2", "1.2.3x", "1" * 65):
        r = client.get(f"{api.url}/studies/{uid}/findings", headers=AUTH)
        assert r.status_code == 422 and "is not a DICOM UID" in r.json()["detail"]


def test_a_study_without_findings_yet_is_409(api, client):
    uid = insert_study(api.index, None, job_state="running")
    for path in ("findings", "report"):
        r = client.get(f"{api.url}/studies/{uid}/{path}", headers=AUTH)
        assert r.status_code == 409 and "no Findings yet (state: running)" in r.json()["detail"]
    r = client.post(f"{api.url}/studies/{uid}/questions", headers=AUTH, json={"question": "?"})
    assert r.status_code == 409
    detail = client.get(f"{api.url}/studies/{uid}", headers=AUTH).json()
    assert detail["state"] == "running" and detail["findings"] is None


def test_studies_are_listed_newest_first_a_page_at_a_time(api, client):
    uids = [insert_study(api.index, findings_dict("clean")) for _ in range(5)]
    for summary in ("false", "true"):
        pages = []
        for offset in (0, 2, 4):
            r = client.get(f"{api.url}/studies?summary={summary}&limit=2&offset={offset}", headers=AUTH)
            assert r.status_code == 200 and r.headers["X-Total-Count"] == "5"
            pages.append([s["study_uid"] for s in r.json()])
        assert pages == [uids[4:2:-1], uids[2:0:-1], uids[0:1]]
    for bad in ("limit=0", "limit=1001", "offset=-1", "limit=many"):
        r = client.get(f"{api.url}/studies?{bad}", headers=AUTH)
        assert r.status_code == 422, bad


def test_studies_findings_report_and_deliveries(api, client):
    findings = findings_dict("bleed")
    uid = insert_study(api.index, findings)
    other = insert_study(api.index, findings_dict("clean"))
    outbox.enqueue(api.index, [{"study_uid": uid, "series_uid": "1.2.3", "series_version": 1,
                                "kind": kind, "sop_instance_uid": f"1.2.3.{i}", "path": "/x",
                                "destination": "PACS"} for i, kind in enumerate(("seg", "sr"))])
    full = client.get(f"{api.url}/studies", headers=AUTH).json()
    assert [s["study_uid"] for s in full] == [other, uid]  # newest first
    assert full[1]["series"][0]["jobs"][0]["result"] == findings  # the lead's format, kept
    summary = client.get(f"{api.url}/studies?summary=true", headers=AUTH).json()
    summary.reverse()
    assert summary[0] | {"received_at": None} == {
        "study_uid": uid, "received_at": None, "state": "done", "series": 1, "questions": 0,
        "findings": {"risk_tier": findings["risk_tier"], "volumes_ml": findings["volumes_ml"],
                     "aast_grades": {"spleen": findings["organs"]["spleen"]["aast_grade"]},
                     "recommendation": findings["recommendation"]["summary"]}}
    assert summary[1]["findings"]["volumes_ml"]["hemorrhage"] == 0
    detail = client.get(f"{api.url}/studies/{uid}", headers=AUTH).json()
    assert detail["state"] == "done" and detail["series"][0]["state"] == "done"
    assert "result" not in detail["series"][0]["jobs"][0]
    assert detail["findings"]["risk_tier"] == findings["risk_tier"]
    assert [d["kind"] for d in detail["deliveries"]] == ["seg", "sr"]
    got = client.get(f"{api.url}/studies/{uid}/findings", headers=AUTH).json()
    assert got["findings"] == findings and got["series_version"] == 1 and got["job_id"]
    assert Findings.from_json_dict(got["findings"]).report == findings["report"]
    report = client.get(f"{api.url}/studies/{uid}/report", headers=AUTH).json()
    assert report["report"] == findings["report"] and "RESEARCH USE ONLY" in report["research_use"]
    deliveries = client.get(f"{api.url}/studies/{uid}/deliveries", headers=AUTH).json()
    assert [(d["kind"], d["state"]) for d in deliveries["deliveries"]] == [("seg", "pending"),
                                                                         ("sr", "pending")]


def test_openapi_document_is_served(api, client):
    doc = client.get(f"{api.url}/openapi.json", headers=AUTH).json()
    assert {"/healthz", "/studies", "/studies/{study_uid}", "/studies/{study_uid}/findings",
            "/studies/{study_uid}/report", "/studies/{study_uid}/deliveries",
            "/studies/{study_uid}/conversation", "/studies/{study_uid}/questions"} <= set(doc["paths"])
    post = doc["paths"]["/studies/{study_uid}/questions"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert post["security"] == [{"HTTPBearer": []}]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_the_answer_streams_and_is_stored(tmp_path, client):
    findings = findings_dict("bleed")
    with ApiServer(tmp_path / "data", answerer=SlowAnswerer(0.01)) as api:
        uid = insert_study(api.index, findings)
        arrivals = []
        with client.stream("POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                           json={"question": "How much blood is there?"}) as response:
            for event in sse_events(response.iter_raw()):
                arrivals.append((time.monotonic(), event))
        kinds = [e.event for _, e in arrivals]
        assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") > 10
        first_token = next(t for t, e in arrivals if e.event == "token")
        assert arrivals[-1][0] - first_token > 0.1  # tokens arrived one by one, not at the end
        text = "".join(e.data for _, e in arrivals if e.event == "token")
        expected = GroundedAnswerer().compose(Question("How much blood is there?",
                                                       Findings.from_json_dict(findings)))
        assert text == expected
        start, done = json.loads(arrivals[0][1].data), json.loads(arrivals[-1][1].data)
        assert done["question_id"] == start["question_id"] and done["state"] == "complete"
        messages = client.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()
        assert [(m["id"], m["role"], m["text"]) for m in messages["messages"]] == [
            (start["question_id"], "question", "How much blood is there?"),
            (done["message_id"], "answer", text)]
        assert messages["messages"][1]["job_id"] == done["job_id"] == start["job_id"]


def test_multi_turn_context_and_hemodynamic_status(api, client):
    uid = insert_study(api.index, findings_dict("bleed"))
    first, _, _ = ask(client, api.url, uid, "Is the liver injured?")
    assert first.startswith("Liver:")
    follow, done, _ = ask(client, api.url, uid, "What grade?")
    assert follow.startswith("(Following on from your earlier question about the liver.)")
    unstable, _, _ = ask(client, api.url, uid, "What should we do?", status="unstable")
    assert "For an unstable patient" in unstable and "laparotomy" in unstable
    messages = client.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
    assert [m["role"] for m in messages] == ["question", "answer"] * 3
    assert messages[4]["hemodynamic_status"] == "unstable"
    assert messages[3]["id"] == done["message_id"] and messages[3]["question_id"] == messages[2]["id"]
    assert client.get(f"{api.url}/studies?summary=true", headers=AUTH).json()[0]["questions"] == 3


def test_concurrent_questions_on_two_studies(tmp_path):
    slow = SlowAnswerer(0.01)
    with ApiServer(tmp_path / "data", answerer=slow) as api:
        bleed = insert_study(api.index, findings_dict("bleed"))
        clean = insert_study(api.index, findings_dict("clean"))
        results: dict[str, tuple] = {}

        def run(uid: str, question: str) -> None:
            with httpx.Client(timeout=30) as c:
                started = time.monotonic()
                text, done, _ = ask(c, api.url, uid, question)
                results[uid] = (text, done, started, time.monotonic())

        threads = [threading.Thread(target=run, args=(uid, q)) for uid, q in
                   ((bleed, "How much blood is there, and where?"),
                    (clean, "How much blood is there, and where?"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(results) == {bleed, clean}
        assert "Hemorrhage (all blood, blush included): " in results[bleed][0]
        assert "No blood-density collection" in results[clean][0]
        assert "nothing to locate" in results[clean][0]
        # The two answers were produced at the same time, not one after the other.
        (_, s1, e1), (_, s2, e2) = slow.intervals
        assert s2 < e1 and s1 < e2
        with httpx.Client() as c:
            for uid in (bleed, clean):
                messages = c.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()
                assert [m["text"] for m in messages["messages"]][1] == results[uid][0]
                assert messages["messages"][1]["id"] == results[uid][1]["message_id"]


def test_a_follow_up_asked_during_an_answer_waits_for_it_and_gets_it_as_context(tmp_path):
    slow = SlowAnswerer(0.02)
    with ApiServer(tmp_path / "data", answerer=slow) as api:
        uid = insert_study(api.index, findings_dict("bleed"))
        first_token, results = threading.Event(), {}

        def first() -> None:
            with httpx.Client(timeout=30) as c, c.stream(
                    "POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                    json={"question": "Is the liver injured?"}) as response:
                events = []
                for event in sse_events(response.iter_raw()):
                    events.append(event)
                    first_token.set()
                results["first"] = "".join(e.data for e in events if e.event == "token")

        asker = threading.Thread(target=first)
        asker.start()
        assert first_token.wait(10)
        with httpx.Client(timeout=30) as c:
            scrape = c.get(f"{api.url}/metrics", headers=AUTH).text
            assert re.search(r"^trauma_node_answers_open 1$", scrape, re.M), scrape[-300:]
            follow, done, _ = ask(c, api.url, uid, "What grade?")
        asker.join(30)
        assert results["first"].startswith("Liver:")
        assert follow.startswith("(Following on from your earlier question about the liver.)")
        (_, s1, e1), (_, s2, e2) = slow.intervals
        assert e1 <= s2  # one answer at a time on one study, in the order asked
        with httpx.Client() as c:
            messages = c.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
        questions = [m for m in messages if m["role"] == "question"]
        answers = {m["question_id"]: m for m in messages if m["role"] == "answer"}
        assert [answers[q["id"]]["text"] for q in questions] == [results["first"], follow]
        assert all(a["state"] == "complete" for a in answers.values())


def test_a_question_given_up_while_waiting_does_not_hold_up_the_next(tmp_path, client):
    slow = SlowAnswerer(0.02)
    with ApiServer(tmp_path / "data", answerer=slow) as api:
        uid = insert_study(api.index, findings_dict("bleed"))
        first_token = threading.Event()

        def first() -> None:
            with httpx.Client(timeout=30) as c, c.stream(
                    "POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                    json={"question": "Show me the report"}) as response:
                for event in sse_events(response.iter_raw()):
                    first_token.set()

        asker = threading.Thread(target=first)
        asker.start()
        assert first_token.wait(10)
        # The second asker reads only the start event and goes away while it waits.
        with client.stream("POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                           json={"question": "Is the spleen injured?"}) as response:
            assert next(sse_events(response.iter_raw())).event == "start"
        third, done, _ = ask(client, api.url, uid, "Is the liver injured?")
        asker.join(30)
        assert third.startswith("Liver:") and done["state"] == "complete"
        messages = client.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
        by_question = {m["question_id"]: m for m in messages if m["role"] == "answer"}
        spleen = next(m for m in messages if m["text"] == "Is the spleen injured?")
        assert by_question[spleen["id"]]["state"] == "interrupted"
        assert by_question[spleen["id"]]["text"] == ""
        assert len(slow.intervals) == 2  # the given-up question never reached the answerer


def test_a_client_that_goes_away_interrupts_the_answer(tmp_path, client):
    slow = SlowAnswerer(0.05)
    with ApiServer(tmp_path / "data", answerer=slow) as api:
        uid = insert_study(api.index, findings_dict("bleed"))
        with client.stream("POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                           json={"question": "Show me the report"}) as response:
            seen = 0
            for event in sse_events(response.iter_raw()):
                seen += event.event == "token"
                if seen == 3:
                    break
        assert slow.closed.wait(10), "the answerer was not closed"

        def stored():
            messages = client.get(f"{api.url}/studies/{uid}/conversation",
                                  headers=AUTH).json()["messages"]
            return messages if len(messages) == 2 else None
        deadline = time.monotonic() + 10
        while not (messages := stored()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert messages and messages[1]["state"] == "interrupted"
        assert messages[1]["text"].startswith("The report of")
        assert len(messages[1]["text"]) < 200


def test_an_answer_in_flight_when_the_node_stops_is_stored_as_interrupted(tmp_path, client):
    slow = SlowAnswerer(0.2)  # the answer would take far longer than the shutdown grace
    received: list[str] = []
    three = threading.Event()
    api = ApiServer(tmp_path / "data", answerer=slow).__enter__()
    uid = insert_study(api.index, findings_dict("bleed"))

    def listen() -> None:
        try:
            with client.stream("POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                               json={"question": "Show me the report"}) as response:
                for event in sse_events(response.iter_raw()):
                    if event.event == "token":
                        received.append(event.data)
                    if len(received) == 3:
                        three.set()
        except httpx.HTTPError:
            pass  # the server went away mid-stream, as it should

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert three.wait(30), "no answer started"
    stopping = time.monotonic()
    api.__exit__(None, None, None)  # as `serve` does on SIGTERM
    assert time.monotonic() - stopping < 10
    listener.join(10)
    assert slow.closed.is_set(), "the answerer was not closed"
    with ApiServer(tmp_path / "data", answerer=slow) as again:
        messages = client.get(f"{again.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
    assert [m["role"] for m in messages] == ["question", "answer"]
    answer = messages[1]
    assert answer["state"] == "interrupted"
    assert answer["text"].startswith("The report of") and answer["text"].startswith("".join(received))


def test_a_failing_answerer_ends_with_an_error_event(tmp_path, client):
    with ApiServer(tmp_path / "data", answerer=SlowAnswerer(0, fail_after=5)) as api:
        uid = insert_study(api.index, findings_dict("bleed"))
        with client.stream("POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                           json={"question": "How much blood?"}) as response:
            events = list(sse_events(response.iter_raw()))
        assert events[-1].event == "error"
        error = json.loads(events[-1].data)
        assert error["state"] == "failed" and "RuntimeError" in error["error"]
        messages = client.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
        assert messages[1]["id"] == error["message_id"] and messages[1]["state"] == "failed"
        assert len([e for e in events if e.event == "token"]) == 5


def test_conversations_survive_a_restart(tmp_path, client):
    data = tmp_path / "data"
    with ApiServer(data) as api:
        uid = insert_study(api.index, findings_dict("bleed"))
        first, done, _ = ask(client, api.url, uid, "Is the spleen injured?")
    with ApiServer(data) as api:
        messages = client.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
        assert [(m["role"], m["text"]) for m in messages] == [
            ("question", "Is the spleen injured?"), ("answer", first)]
        assert messages[1]["id"] == done["message_id"]
        # The earlier turn is still the context of the next question.
        follow, done2, _ = ask(client, api.url, uid, "Where is it?")
        assert follow.startswith("(Following on from your earlier question about the spleen.)")
        assert done2["message_id"] > done["message_id"]


def test_questions_and_answers_are_never_logged(api, client, caplog):
    caplog.set_level(logging.DEBUG)
    uid = insert_study(api.index, findings_dict("bleed"))
    question = "Mrs Quuxley asks: how much blood around the liver?"
    text, done, _ = ask(client, api.url, uid, question)
    logged = caplog.text
    assert f"question {done['question_id']} answered by grounded: complete" in logged
    assert "Quuxley" not in logged and question not in logged
    for line in text.splitlines():
        if len(line) > 30:
            assert line not in logged
