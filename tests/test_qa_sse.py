"""Server-Sent Events framing: any text survives, through the parser and a real server."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from support.nodes import AUTH
from support.qa_support import ApiServer, findings_dict, insert_study, sse_events
from node.http.answer_stream import normalise, sse_comment, sse_event

TRICKY = ["Hé", "llo\n", "\n", "wörld 🩸 ", "a\r\nb", "c\rd", " two  spaces ", ":colon",
          "data: not a field", "\n\nend\n", "漢字", "tab\tand\u2028separator", "", "∑ 90.3 mL"]


def test_each_line_is_a_data_line_and_events_end_with_a_blank_line():
    assert sse_event("x") == b"data: x\n\n"
    assert sse_event("a\nb", event="token") == b"event: token\ndata: a\ndata: b\n\n"
    assert sse_event("a\n", event="token") == b"event: token\ndata: a\ndata: \n\n"
    assert sse_event("\n") == b"data: \ndata: \n\n"
    assert sse_event("r\r\nn\rm") == b"data: r\ndata: n\ndata: m\n\n"
    assert sse_event("é🩸") == "data: é🩸\n\n".encode()
    assert sse_event("{}", event="done", event_id="7") == b"event: done\nid: 7\ndata: {}\n\n"
    assert sse_comment("keep-alive") == b": keep-alive\n\n"
    with pytest.raises(ValueError):
        sse_event("x", event="to\nken")


@pytest.mark.parametrize("text", TRICKY)
def test_one_event_round_trips(text):
    events = list(sse_events([sse_event(text, event="token")]))
    assert [(e.event, e.data) for e in events] == [("token", normalise(text))]


def test_a_stream_round_trips_whatever_the_chunking():
    stream = b"".join([sse_event("{}", event="start"), sse_comment("keep-alive")]
                      + [sse_event(t, event="token") for t in TRICKY]
                      + [sse_event('{"message_id": 1}', event="done")])
    expected = "".join(normalise(t) for t in TRICKY)
    rng = random.Random(0)
    for _ in range(50):  # cut anywhere, inside multi-byte characters and CRLFs too
        cuts = sorted(rng.sample(range(1, len(stream)), 12))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        events = list(sse_events(chunks))
        assert events[0].event == "start" and events[-1].event == "done"
        assert "".join(e.data for e in events if e.event == "token") == expected


class TrickyAnswerer:
    name, version, description = "tricky", "0", "test: awkward tokens"

    def answer(self, question):
        yield from TRICKY


def test_tricky_tokens_through_the_server_and_the_database(tmp_path):
    findings = findings_dict("bleed")
    with ApiServer(tmp_path / "data", answerer=TrickyAnswerer()) as api, httpx.Client() as client:
        uid = insert_study(api.index, findings)
        with client.stream("POST", f"{api.url}/studies/{uid}/questions", headers=AUTH,
                           json={"question": "Ünïcode? 🩸\nand a second line"}) as response:
            assert response.status_code == 200
            assert response.headers["cache-control"] == "no-cache"
            raw = b"".join(response.iter_raw())
        events = list(sse_events([raw]))
        tokens = [e.data for e in events if e.event == "token"]
        assert tokens == [normalise(t) for t in TRICKY if t]
        assert b"data: a\ndata: b\n\n" in raw  # a CRLF inside a token: two data lines
        done = json.loads(events[-1].data)
        messages = client.get(f"{api.url}/studies/{uid}/conversation", headers=AUTH).json()["messages"]
        assert messages[0]["text"] == "Ünïcode? 🩸\nand a second line"
        assert messages[1]["id"] == done["message_id"] and messages[1]["text"] == "".join(tokens)
