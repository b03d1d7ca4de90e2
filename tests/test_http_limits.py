"""The HTTP API checks the token before it reads a request body, and caps the body's size:
big bodies, with and without a token, are refused unread, and the served node's memory
does not grow by what was sent."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from support.nodes import API_TOKEN, AUTH, FAST

BIG = 256 * 2**20  # what a careless or hostile client sends
QUESTION = "/studies/1.2.3/questions"


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post(port: int, headers: dict[str, str], body_bytes: int, chunked: bool = False,
         before_answer: int = 0) -> tuple[int, int]:
    """POST a body of body_bytes zeros over a raw socket: the headers and before_answer
    bytes first, then the answer is read, then the rest is pushed until the node closes
    the connection. Returns (status, bytes of body the node let in)."""
    head = [f"POST {QUESTION} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
            *(f"{k}: {v}" for k, v in headers.items()),
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_bytes}"]
    piece = b"\0" * 2**16
    if chunked:
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        while sent < before_answer:
            sock.sendall(piece)
            sent += len(piece)
        answer = sock.recv(4096).decode("latin-1")
        status = int(answer.split(" ", 2)[1])
        assert "connection: close" in answer.lower()
        try:
            while sent < body_bytes:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:  # closed by the node: what it let in is what sits in buffers
            pass
        return status, sent


def test_big_bodies_are_refused_unread_with_and_without_a_token(node_factory):
    node = node_factory(FAST)
    port = node.http_port
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    before = vm_rss_mb(node.proc.pid)

    results = {
        "no token": post(port, {}, BIG),
        "wrong token": post(port, {"Authorization": "Bearer not-the-token-at-all"}, BIG),
        "token, too long": post(port, token, BIG),
        # No Content-Length to refuse by: cut off once api.max_request_bytes came in.
        "token, chunked": post(port, token, BIG, chunked=True, before_answer=2**17),
    }
    assert {k: status for k, (status, _) in results.items()} == {
        "no token": 401, "wrong token": 401, "token, too long": 413, "token, chunked": 413}
    for what, (_, let_in) in results.items():
        assert let_in < 32 * 2**20, f"{what}: {let_in} bytes went in"
    grown = vm_rss_mb(node.proc.pid) - before
    assert grown < 32, f"serve grew by {grown:.0f} MB"

    # A question of the usual size is read (404: no such study here).
    answer = httpx.post(f"{node.url}{QUESTION}", headers=AUTH, timeout=10,
                        json={"question": "How much blood is there?"})
    assert answer.status_code == 404, answer.text
