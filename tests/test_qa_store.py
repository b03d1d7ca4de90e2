"""The conversation store: turns in order, context for the answerer, retention purge."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import update

from support.nodes import AUTH
from support.qa_support import ApiServer, findings_dict, insert_study
from node.store import conversations
from node.store.conversations import QaMessage
from node.store.database import Index, utcnow
from node.store.study_findings import latest_findings


def _index(tmp_path) -> Index:
    return Index(f"sqlite:///{tmp_path / 'index.sqlite'}")


def test_turns_are_stored_in_order_and_failed_answers_are_not_context(tmp_path):
    index = _index(tmp_path)
    uid = insert_study(index, findings_dict("bleed"))
    pk = conversations.study_id(index, uid)
    q1 = conversations.add_question(index, pk, "first?", "stable")
    a1 = conversations.add_answer(index, pk, q1, "one", "complete", "grounded", 1)
    q2 = conversations.add_question(index, pk, "second?")
    conversations.add_answer(index, pk, q2, "partial", "failed", "grounded", 1)
    q3 = conversations.add_question(index, pk, "third?")
    conversations.add_answer(index, pk, q3, "thr", "interrupted", "grounded", 1)
    history = conversations.history(index, pk)
    assert [(t.question, t.answer) for t in history] == [("first?", "one"), ("third?", "thr")]
    assert [t.question for t in conversations.history(index, pk, turns=1)] == ["third?"]
    assert conversations.history(index, pk, before_id=q2)[0].answer == "one"
    messages = conversations.messages(index, pk)
    assert [m["role"] for m in messages] == ["question", "answer"] * 3
    assert messages[0]["hemodynamic_status"] == "stable"
    assert messages[1] | {"created_at": None} == {
        "id": a1, "role": "answer", "text": "one", "created_at": None, "question_id": q1,
        "state": "complete", "answerer": "grounded", "job_id": 1}
    assert conversations.counts(index, [pk]) == {pk: 3}
    assert conversations.counts(index, [pk + 1]) == {}  # only the studies asked for
    # A question asked while the one before it was being answered: that answer is
    # stored after it, and is still its context.
    q4 = conversations.add_question(index, pk, "fourth?")
    q5 = conversations.add_question(index, pk, "fifth?")
    conversations.add_answer(index, pk, q4, "four", "complete", "grounded", 1)
    assert [t.question for t in conversations.history(index, pk, before_id=q5)] == [
        "first?", "third?", "fourth?"]
    index.close()


def _age(index: Index, message_id: int, days: float) -> None:
    with index.engine.begin() as conn:
        conn.execute(update(QaMessage).where(QaMessage.id == message_id).values(
            created_at=utcnow() - dt.timedelta(days=days)))


def test_purge_removes_turns_older_than_the_retention(tmp_path):
    index = _index(tmp_path)
    pk = conversations.study_id(index, insert_study(index, findings_dict("bleed")))
    old_q = conversations.add_question(index, pk, "old?")
    old_a = conversations.add_answer(index, pk, old_q, "old", "complete", "grounded", 1)
    edge_q = conversations.add_question(index, pk, "asked 31 days ago, answered within the day?")
    conversations.add_answer(index, pk, edge_q, "late", "complete", "grounded", 1)
    new_q = conversations.add_question(index, pk, "new?")
    conversations.add_answer(index, pk, new_q, "new", "complete", "grounded", 1)
    _age(index, old_q, 40)
    _age(index, old_a, 40)
    _age(index, edge_q, 31)  # its answer is younger, but goes with it
    assert conversations.purge(index, 30) == 4
    assert [m["text"] for m in conversations.messages(index, pk)] == ["new?", "new"]
    assert conversations.purge(index, 30) == 0
    index.close()


def test_the_server_purges_at_start_with_the_configured_retention(tmp_path):
    (tmp_path / "data").mkdir()
    index = _index(tmp_path / "data")
    uid = insert_study(index, findings_dict("bleed"))
    pk = conversations.study_id(index, uid)
    q = conversations.add_question(index, pk, "three days old")
    conversations.add_answer(index, pk, q, "x", "complete", "grounded", 1)
    _age(index, q, 3)
    keep = conversations.add_question(index, pk, "one day old")
    _age(index, keep, 1)
    index.close()
    with ApiServer(tmp_path / "data", conversation_retention_days=2) as api:
        messages = httpx.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()
        assert messages["retention_days"] == 2
        assert [m["text"] for m in messages["messages"]] == ["one day old"]


def test_findings_of_the_current_version_only(tmp_path):
    index = _index(tmp_path)
    findings = findings_dict("bleed")
    uid = insert_study(index, findings)
    found = latest_findings(index, uid)
    assert found is not None and found.findings == findings and found.series_version == 1
    assert latest_findings(index, "1.2.3") is None
    # A placeholder result (not a Findings record) is not taken for Findings.
    assert latest_findings(index, insert_study(index, {"shape": [40, 128, 128]})) is None
    # Findings kept beside other results of the job are found too.
    nested = latest_findings(index, insert_study(index, {"findings": findings, "outputs": []}))
    assert nested is not None and nested.findings == findings
    # Late images made version 2, not analysed yet: no Findings for the study until it is.
    from node.store.database import Series
    with index.engine.begin() as conn:
        conn.execute(update(Series).values(version=2))
    assert latest_findings(index, uid) is None
    index.close()


def test_the_chosen_slices_are_found_in_the_spool(tmp_path):
    from node.store.database import Instance, Series
    from node.store.study_findings import chosen_images

    index = _index(tmp_path)
    findings = findings_dict("bleed")
    uid = insert_study(index, findings)
    slices, chosen = findings["series"]["slices"], findings["triage"]["chosen"]
    assert chosen
    with index.session() as session, session.begin():
        series = session.query(Series).one()
        for i, s in enumerate(slices):
            session.add(Instance(series_id=series.id, sop_instance_uid=s["sop_instance_uid"],
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                 transfer_syntax_uid="1.2.840.10008.1.2.1",
                                 path=f"{uid}/x/{i}.dcm", size_bytes=1, series_version=1))
    images = chosen_images(index, tmp_path / "spool", findings)
    assert images == [(str(tmp_path / "spool" / uid / "x" / f"{i}.dcm"), None) for i in chosen]
    index.close()
