#!/usr/bin/env python3
"""Q&A benchmark: time to first token and to the full answer, for the default answerer.

    .venv/bin/python bench/qa_bench.py [--write-results]

1. Runs the pipeline once on a phantom (120 slices of 256x256 over the abdomen,
   large hemoperitoneum + blush) and keeps its Findings.
2. In process: the grounded answerer alone (pipeline.answering), per question
   kind: from the call to the first piece, and to the last.
3. Over HTTP: the node's API (node.http.app.create_app under uvicorn, as in
   `trauma-node serve`) in its own process on loopback, with the Findings stored
   as a done job in a fresh SQLite index; an httpx client POSTs each question
   and reads the Server-Sent Events: time to the first `token` event and to the
   `done` event (question and answer stored). Every question is a new turn of
   the study's conversation, so the context (up to 20 earlier turns) is read from
   the database each time. Then 4 clients at once, each on its own study.
4. Prints the medians and 95th percentiles; --write-results replaces the `## Q&A`
   section of bench/RESULTS.md.

5. The MedGemma answerer on a tiny random-weight model of the same classes
   (tests/support/tiny_models.py), in process on the CPU: the streaming machinery's
   own time to first piece and full answer (no weights can be had here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Q&A"
TOKEN = "bench-token-0123456789abcdef"

QUESTIONS = {
    "volume": "How much blood is there?",
    "organ": "Is the spleen injured, and on which slices?",
    "follow-up": "What grade?",
    "management": "What should we do?",
    "outside": "Is the pancreas injured?",
    "report": "Show me the report",
}
PHANTOM = dict(slices=120, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=2.5,
               blood="large", blush=True)


def make_findings(work: Path) -> dict:
    from support.phantom import PhantomSpec, write_series
    from pipeline import PipelineSettings, run_series

    truth = write_series(PhantomSpec(**PHANTOM), work / "phantom")
    return run_series(truth.paths, PipelineSettings()).to_json_dict()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def in_process(findings: dict, reps: int, answerer=None,
               questions: dict[str, str] | None = None) -> dict[str, dict]:
    """Each question asked reps times of answerer (default: the grounded one), in process."""
    from pipeline.answering import GroundedAnswerer, Question, Turn
    from pipeline.findings import Findings

    record = Findings.from_json_dict(findings)
    answerer = answerer or GroundedAnswerer()
    history = (Turn("Is the spleen injured?", "Spleen: ..."),)
    out = {}
    for kind, text in (questions or QUESTIONS).items():
        first, full, chars, pieces = [], [], 0, 0
        for _ in range(reps):
            start = time.perf_counter()
            it = answerer.answer(Question(text, record, history if kind == "follow-up" else ()))
            parts = [next(it)]
            first.append(time.perf_counter() - start)
            parts += list(it)
            full.append(time.perf_counter() - start)
            chars, pieces = len("".join(parts)), len(parts)
        out[kind] = {"first": first, "full": full, "chars": chars, "pieces": pieces}
    return out


def tiny_model(findings: dict, reps: int) -> dict[str, dict]:
    """The MedGemma answerer on a tiny random-weight Gemma3 (tests/support/tiny_models.py),
    through the same loading and streaming code as the real model, on the CPU."""
    from support import tiny_models
    from pipeline.registry import create_answerer

    settings = tiny_models.model_settings(answering="medgemma")
    answerer = create_answerer(settings)
    questions = {k: QUESTIONS[k] for k in ("volume", "follow-up", "outside")}
    in_process(findings, 1, answerer, questions)  # load and warm up once, not timed
    return in_process(findings, reps, answerer, questions)


# --- the server, in its own process ---------------------------------------------------------

def serve(data_dir: str, port: int, studies: int, findings_path: str) -> None:
    import uvicorn

    import node.store.conversations  # noqa: F401
    from node.http.app import create_app
    from node.store.database import Index
    from support.qa_support import api_settings, insert_study

    settings = api_settings(Path(data_dir))
    index = Index(settings.database_url)
    findings = json.loads(Path(findings_path).read_text())
    uids = [insert_study(index, findings) for _ in range(studies)]
    Path(data_dir, "uids.json").write_text(json.dumps(uids))
    app = create_app(settings, index, tokens=[TOKEN])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def ask(client, url: str, uid: str, question: str) -> tuple[float, float, int]:
    from support.qa_support import sse_events

    start = time.perf_counter()
    first = None
    with client.stream("POST", f"{url}/studies/{uid}/questions", json={"question": question},
                       headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        response.raise_for_status()
        for event in sse_events(response.iter_raw()):
            if event.event == "token" and first is None:
                first = time.perf_counter() - start
            elif event.event in ("done", "error"):
                assert event.event == "done", event.data
                return first or 0.0, time.perf_counter() - start, json.loads(event.data)["message_id"]
    raise AssertionError("stream ended without done")


def over_http(findings: dict, work: Path, reps: int, clients: int) -> tuple[dict, dict]:
    import httpx

    from support.nodes import free_port

    data = work / "data"
    data.mkdir()
    (work / "findings.json").write_text(json.dumps(findings))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(data), str(port),
                             str(clients), str(work / "findings.json")], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API server did not start")
            time.sleep(0.1)
        uids = json.loads((data / "uids.json").read_text())
        sequential: dict[str, dict] = {k: {"first": [], "full": []} for k in QUESTIONS}
        with httpx.Client(timeout=30) as client:
            ask(client, url, uids[0], "warm-up: how much blood?")
            for _ in range(reps):
                for kind, text in QUESTIONS.items():
                    first, full, _ = ask(client, url, uids[0], text)
                    sequential[kind]["first"].append(first)
                    sequential[kind]["full"].append(full)
        results: list[tuple[float, float]] = []
        lock = threading.Lock()

        def one_client(uid: str) -> None:
            with httpx.Client(timeout=30) as c:
                for _ in range(reps):
                    for text in QUESTIONS.values():
                        first, full, _ = ask(c, url, uid, text)
                        with lock:
                            results.append((first, full))

        threads = [threading.Thread(target=one_client, args=(uid,)) for uid in uids[:clients]]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        concurrent = {"first": [r[0] for r in results], "full": [r[1] for r in results],
                      "answers": len(results), "wall": wall, "clients": clients}
        return sequential, concurrent
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def section(local: dict, http: dict, concurrent: dict, reps: int, local_reps: int,
            tiny: dict, tiny_reps: int) -> str:
    cpu = platform.machine()
    lines = [
        SECTION, "",
        f"`bench/qa_bench.py`, default grounded answerer (embedded, no weights), {cpu}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Findings from the pipeline "
        "on a phantom (120 slices of 256x256, large hemoperitoneum + blush). Times in ms; "
        f"median / 95th percentile. Load average at the start: {os.getloadavg()[0]:.1f} "
        "(other work on the machine adds to the tails).", "",
        f"In process (`GroundedAnswerer.answer`, {local_reps} runs per question):", "",
        "| question | first piece | full answer | characters | pieces |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, r in local.items():
        lines.append(f"| {kind} | {ms(statistics.median(r['first']))} / {ms(pct(r['first'], .95))} "
                     f"| {ms(statistics.median(r['full']))} / {ms(pct(r['full'], .95))} "
                     f"| {r['chars']} | {r['pieces']} |")
    lines += [
        "", f"Over HTTP (`POST /studies/{{uid}}/questions`, uvicorn in its own process, SQLite; "
        f"one client, {reps} runs per question, each a new stored turn; first token = first "
        "`token` event at the client, full = `done` event, answer stored):", "",
        "| question | first token | full answer |", "| --- | --- | --- |",
    ]
    for kind, r in http.items():
        lines.append(f"| {kind} | {ms(statistics.median(r['first']))} / {ms(pct(r['first'], .95))} "
                     f"| {ms(statistics.median(r['full']))} / {ms(pct(r['full'], .95))} |")
    c = concurrent
    lines += [
        "", f"{c['clients']} clients at once, each on its own study: {c['answers']} answers in "
        f"{c['wall']:.2f} s ({c['answers'] / c['wall']:.0f} answers/s); first token "
        f"{ms(statistics.median(c['first']))} / {ms(pct(c['first'], .95))} ms, full answer "
        f"{ms(statistics.median(c['full']))} / {ms(pct(c['full'], .95))} ms.", "",
        "Tiny-model answerer (`pipeline.backends.medgemma_answering`: a Gemma3 of the "
        "MedGemma classes with random weights from tests/support/tiny_models.py, loaded through the "
        "real loading code, generation streamed through `TextIteratorStreamer`, at most "
        f"24 new tokens, CPU; {tiny_reps} runs per question; what it measures is the "
        "machinery around the model, not MedGemma's speed):", "",
        "| question | first piece | full answer | characters | pieces |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, r in tiny.items():
        lines.append(f"| {kind} | {ms(statistics.median(r['first']))} / {ms(pct(r['first'], .95))} "
                     f"| {ms(statistics.median(r['full']))} / {ms(pct(r['full'], .95))} "
                     f"| {r['chars']} | {r['pieces']} |")
    lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or add) the Q&A section of RESULTS.md, leaving the others alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip() + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        rest = "" if end < 0 else "\n\n" + old[end + 1:]
        new = old[:start] + text.rstrip() + rest
    RESULTS.write_text(new.rstrip() + "\n")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=30, help="HTTP runs per question")
    p.add_argument("--local-reps", type=int, default=300, help="in-process runs per question")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--tiny-reps", type=int, default=10, help="tiny-model runs per question")
    p.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="qa-bench-") as tmp:
        work = Path(tmp)
        findings = make_findings(work)
        local = in_process(findings, args.local_reps)
        http, concurrent = over_http(findings, work, args.reps, args.clients)
        tiny = tiny_model(findings, args.tiny_reps)
    text = section(local, http, concurrent, args.reps, args.local_reps, tiny, args.tiny_reps)
    print(text)
    if args.write_results:
        write_section(text)
        print(f"updated {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
