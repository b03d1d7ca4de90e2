"""bench/RESULTS.md: each benchmark owns one `## ` section and rewrites only that."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(head: str, section: str, results: Path = RESULTS) -> None:
    """Replace the section that starts with the line `head` (or append it), keeping the rest."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    results.write_text(text)
