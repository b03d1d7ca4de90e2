"""A minimal PDF of plain text: A4 pages, a title, monospaced lines, a footer.

Written by hand (PDF 1.4 with two of the standard 14 fonts, which every reader
has; no font files, no dependency). Text is real text, so that it can be searched,
copied and read back (`pdftotext`). Characters outside Windows-1252 become '?',
but for a few spelt out.
"""

from __future__ import annotations

import textwrap

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4 in points
MARGIN = 56
TITLE_SIZE = 13
BODY_SIZE = 9.5
LEADING = 12.5
# Courier glyphs are 0.6 em wide: the characters that fit between the margins.
LINE_CHARS = int((PAGE_WIDTH - 2 * MARGIN) / (0.6 * BODY_SIZE))
TITLE_ROOM = 2 * LEADING + TITLE_SIZE
LINES_PER_PAGE = int((PAGE_HEIGHT - 2 * MARGIN - TITLE_ROOM) / LEADING)
SPELT_OUT = str.maketrans({"\u2265": ">=", "\u2264": "<=", "\u2192": "->"})


def text_pdf(title: str, lines: list[str], footer: str) -> bytes:
    """Lines are wrapped to the page width ('- ' items with a hanging indent)."""
    wrapped = [part for line in lines for part in _wrap(line)]
    pages = [wrapped[n:n + LINES_PER_PAGE] for n in range(0, max(len(wrapped), 1), LINES_PER_PAGE)]
    fonts = "<< /F1 3 0 R /F2 4 0 R >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        ("<< /Type /Pages /Count %d /Kids [%s] >>" % (
            len(pages), " ".join(f"{5 + 2 * n} 0 R" for n in range(len(pages))))).encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
    ]
    for n, page in enumerate(pages):
        stream = _page_stream(title, page, f"{footer} - page {n + 1} of {len(pages)}")
        objects.append((f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}]"
                        f" /Resources << /Font {fonts} >> /Contents {6 + 2 * n} 0 R >>").encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Title " + _string(title) + b" /Producer (trauma-node) >>")
    return _file(objects, info=len(objects))


def _wrap(line: str) -> list[str]:
    if not line.strip():
        return [""]
    indent = "  " if line.startswith("- ") else ""
    return textwrap.wrap(line, LINE_CHARS, subsequent_indent=indent, break_long_words=True,
                         break_on_hyphens=False)


def _page_stream(title: str, lines: list[str], footer: str) -> bytes:
    top = PAGE_HEIGHT - MARGIN - TITLE_SIZE
    parts = [b"BT /F2 %d Tf %d %d Td " % (TITLE_SIZE, MARGIN, top) + _string(title) + b" Tj ET",
             b"BT /F1 %.1f Tf %.1f TL %d %.1f Td" % (BODY_SIZE, LEADING, MARGIN, top - 2 * LEADING)]
    parts += [_string(line) + b" Tj T*" for line in lines]
    parts.append(b"ET")
    parts.append(b"BT /F1 8 Tf %d %d Td " % (MARGIN, MARGIN // 2) + _string(footer) + b" Tj ET")
    return b"\n".join(parts)


def _string(text: str) -> bytes:
    """A PDF literal string in WinAnsiEncoding, its delimiters escaped."""
    raw = text.translate(SPELT_OUT).encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _file(objects: list[bytes], info: int) -> bytes:
    """Header, numbered objects, the cross-reference table with their offsets, trailer."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, info, xref)
    return bytes(out)
