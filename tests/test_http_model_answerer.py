"""The MedGemma answerer (a tiny random-weight model of the same classes) behind the HTTP API:
the answer streams as Server-Sent Events and every turn is stored."""

from __future__ import annotations

import httpx

from support import tiny_models
from support.nodes import AUTH
from support.qa_support import ApiServer, ask, findings_dict, insert_study
from pipeline.registry import create_answerer


def test_model_answer_streams_over_http_and_is_stored(tmp_path):
    answerer = create_answerer(tiny_models.model_settings(answering="medgemma"))
    assert answerer.name == "medgemma"
    with ApiServer(tmp_path / "data", answerer=answerer) as api, httpx.Client(timeout=120) as c:
        uid = insert_study(api.index, findings_dict("bleed"))
        text, done, events = ask(c, api.url, uid, "How much blood is there?")
        tokens = [e for e in events if e.event == "token"]
        assert tokens and text.strip()  # generated text arrived piece by piece
        second, done2, _ = ask(c, api.url, uid, "And near the spleen?")
        conversation = c.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()
    messages = conversation["messages"]
    assert [m["role"] for m in messages] == ["question", "answer"] * 2
    answers = [m for m in messages if m["role"] == "answer"]
    assert [m["id"] for m in answers] == [done["message_id"], done2["message_id"]]
    assert [m["text"] for m in answers] == [text, second]
