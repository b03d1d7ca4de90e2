"""Nothing a sender puts in an AE title or a UID reaches the log unescaped: a newline
cannot forge a log line, an escape sequence cannot drive the terminal that shows it.

Sent over the network to a running `trauma-node serve`, whose log is what an admin
reads (journald, docker logs). The sending pynetdicom is told to accept the hostile
values it would otherwise refuse to send.
"""

from __future__ import annotations

import io
import logging

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config

from support.nodes import FAST, wait_for
from test_idle_connections import refused
from node.logs import EscapingFormatter, FORMAT, escape_controls

FORGED = "FORGED ERROR trauma_node.scp: all is well"


@pytest.fixture
def lax_validation(monkeypatch):
    """The sender's pynetdicom sends any AE title and UID (the node is another process)."""
    monkeypatch.setitem(_config.VALIDATORS, "AE", lambda value: (True, ""))
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))


def forged_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("FORGED")]


def sender(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    return ae


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_ae_title_and_uid_are_logged_escaped(node_factory, phantom_factory,
                                                     lax_validation):
    truth = phantom_factory("log-escaping", slices=2, rows=32, cols=32)
    node = node_factory(FAST)
    # A calling AE title that is no AE title: refused (A-ASSOCIATE-RJ) before it is an
    # association, logged once, counted.
    assoc = sender("A\nFORGED\x1b[2J").associate("127.0.0.1", node.dicom_port,
                                                  ae_title="TRAUMA_AI")
    assert assoc.is_rejected
    wait_for(lambda: refused(node, "bad_request") == 1, timeout=10, what="the refusal counted")
    refusals = [line for line in node.log().splitlines() if "invalid Calling AE Title" in line]
    assert len(refusals) == 1 and "'A\\nFORGED\\x1b[2J'" in refusals[0], refusals

    # A SOP Instance UID with a line of its own in it, in the request and the data set:
    # answered Cannot understand, and pynetdicom's own warning about it escaped too.
    assoc = sender("STORESCU").associate("127.0.0.1", node.dicom_port, ae_title="TRAUMA_AI")
    assert assoc.is_established
    ds = dcmread(truth.paths[0])
    ds.SOPInstanceUID = "1.2.3\n" + FORGED[:40] + "\r\x1b[1A\x7f"
    response = assoc.send_c_store(ds)
    assert response is not None and int(response.Status) == 0xC000
    # The association goes on.
    assert int(assoc.send_c_store(dcmread(truth.paths[1])).Status) == 0x0000
    assoc.release()

    wait_for(lambda: "association released" in node.log(), timeout=10,
             what="the association's end in the log")
    log = node.log()
    assert forged_lines(log) == []
    assert "\x1b" not in log and "\r" not in log and "\x7f" not in log
    assert "'1.2.3\\n" + FORGED[:40] + "\\r\\x1b[1A\\x7f'" in log  # the node's line
    assert "value '1.2.3\\n" + FORGED[:40] in log  # pynetdicom's


def render(record_msg: str, *args, exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(FORMAT))
    logger = logging.getLogger("test_log_escaping.render")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc is None:
            logger.warning(record_msg, *args)
        else:
            try:
                raise exc
            except BaseException:
                logger.exception(record_msg, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_every_control_character_is_escaped():
    controls = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]))
    out = render("value %s end", controls)
    assert out.count("\n") == 1 and out.endswith(" end\n")
    assert all(c not in out[:-1] for c in controls)
    assert "\\n" in out and "\\r" in out and "\\x1b" in out and "\\x7f" in out
    assert "\\x85" in out and "\\u2028" in out
    assert escape_controls("1.2.840.10008 AE_TITLE ü") == "1.2.840.10008 AE_TITLE ü"


def test_tracebacks_keep_their_lines_but_not_the_exception_text():
    try:
        raise KeyError("inner\n" + FORGED)
    except KeyError as inner:
        try:
            raise ValueError("outer\r\n" + FORGED) from inner
        except ValueError as outer:
            exc = outer
    out = render("failed for %s", "x\n" + FORGED, exc=exc)
    assert forged_lines(out) == []
    lines = out.splitlines()
    assert lines[0].endswith("failed for x\\n" + FORGED)
    assert "Traceback (most recent call last):" in lines
    assert any(line.startswith("  File ") for line in lines)  # frames on their own lines
    assert "ValueError: outer\\r\\n" + FORGED in lines
    assert "KeyError: 'inner\\n" + FORGED + "'" in lines


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_library_warnings_repeated_per_instance_are_summarised(node_factory, phantom_factory,
                                                               lax_validation):
    """pydicom warns ten times for each instance whose UIDs are not valid (here a component
    with a leading zero, which the node still stores): the log shows the first of each kind
    and one line with how many more, not two hundred lines for twenty instances."""
    truth = phantom_factory("log-repeats", slices=20, rows=32, cols=32)
    node = node_factory(FAST)
    assoc = sender("STORESCU").associate("127.0.0.1", node.dicom_port, ae_title="TRAUMA_AI")
    for k, path in enumerate(truth.paths):
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.03.{k}"
        assert int(assoc.send_c_store(ds).Status) == 0x0000
    assoc.release()
    wait_for(lambda: "association released" in node.log(), timeout=10,
             what="the association's end in the log")
    node.stop()
    lines = [line for line in node.log().splitlines() if "Invalid value for VR UI" in line]
    summaries = [line for line in lines if "more line(s) like this" in line]
    assert summaries, lines
    assert len(lines) <= 8, "\n".join(lines)  # first of each kind, per process, and summaries
    held_back = sum(int(line.split("more line(s)")[0].rsplit(" ", 2)[-2]) for line in summaries)
    assert held_back >= 100  # of the lines the libraries wrote (10 per instance in all)
