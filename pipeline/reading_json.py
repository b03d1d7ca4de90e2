"""The reading's JSON: the schema, validation, and the repair of near-misses.

A vision-language reading must be one JSON object with exactly the keys of
READING_KEYS (the RSNA LoRA recipe's format). ``parse_reading`` accepts the
strict form, else repairs what is safe to repair (a code fence or prose around
the object, trailing commas, curly quotes, Python literals, a string where a
list belongs, a severity synonym, a missing closing brace of a reply cut at
the token limit) and says it did; anything else is invalid, with the reason.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

READING_KEYS = ("injury_pattern", "organs_involved", "bleeding_description", "severity_estimate",
                "differential_diagnosis")
SEVERITIES = ("none", "mild", "moderate", "severe")
SEVERITY_SYNONYMS = {"no": "none", "normal": "none", "absent": "none", "nil": "none",
                     "minimal": "mild", "minor": "mild", "low": "mild", "small": "mild",
                     "medium": "moderate", "intermediate": "moderate",
                     "high": "severe", "critical": "severe", "life-threatening": "severe",
                     "major": "severe", "large": "severe"}
SCHEMA_TEXT = ('{"injury_pattern": string, "organs_involved": [string, ...], '
               '"bleeding_description": string, "severity_estimate": "none" | "mild" | "moderate" | '
               '"severe", "differential_diagnosis": [string, ...]}')


@dataclass
class ParsedReading:
    value: dict[str, Any] | None  # the five keys, when valid
    parsed: bool
    repaired: bool
    error: str | None


def validate(obj: Any) -> list[str]:
    """Problems with a decoded reply (empty when it matches the schema exactly)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = [f"missing key {k!r}" for k in READING_KEYS if k not in obj]
    problems += [f"unexpected key {k!r}" for k in obj if k not in READING_KEYS]
    for key in ("injury_pattern", "bleeding_description"):
        if key in obj and not (isinstance(obj[key], str) and obj[key].strip()):
            problems.append(f"{key} must be a non-empty string")
    for key in ("organs_involved", "differential_diagnosis"):
        if key in obj and not (isinstance(obj[key], list) and all(isinstance(v, str) for v in obj[key])):
            problems.append(f"{key} must be a list of strings")
    if "severity_estimate" in obj and obj["severity_estimate"] not in SEVERITIES:
        problems.append(f"severity_estimate must be one of {', '.join(SEVERITIES)}")
    return problems


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", text)))
    return ast.literal_eval(python)  # single quotes; raises on anything that is not a literal


def _object_texts(text: str) -> list[str]:
    """Candidate JSON objects inside a reply: fences and prose dropped; a reply cut off
    at the token limit closed as it stands, then without its last, incomplete member."""
    body = re.sub(r"```(?:json|JSON)?", "", text)
    start = body.find("{")
    if start < 0:
        return []
    body = body[start:]
    in_string, escaped = False, False
    stack: list[str] = []
    last_member_end = None  # (position of a top-level comma, the closers needed there)
    for i, ch in enumerate(body):
        if in_string:
            escaped = (ch == "\\") and not escaped
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack:
                stack.pop()
            if not stack:
                return [body[:i + 1]]
        elif ch == "," and len(stack) == 1:
            last_member_end = i
    candidates = [body.rstrip().rstrip(",") + ('"' if in_string else "") + "".join(reversed(stack))]
    if last_member_end is not None:
        candidates.append(body[:last_member_end] + "}")
    return candidates


def _coerce(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: obj[k] for k in READING_KEYS if k in obj}
    for key in ("organs_involved", "differential_diagnosis"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = [v.strip() for v in re.split(r"[;,]", value) if v.strip()]
        elif isinstance(value, list):
            out[key] = [str(v).strip() for v in value if str(v).strip()]
    for key in ("injury_pattern", "bleeding_description"):
        if isinstance(out.get(key), list):
            out[key] = "; ".join(str(v) for v in out[key])
    severity = out.get("severity_estimate")
    if isinstance(severity, str):
        word = severity.strip().lower()
        word = SEVERITY_SYNONYMS.get(word, word)
        if word not in SEVERITIES:  # "moderate to severe": the first severity word named
            named = [s for s in re.findall(r"[a-z-]+", word) if s in SEVERITIES or s in SEVERITY_SYNONYMS]
            word = SEVERITY_SYNONYMS.get(named[0], named[0]) if named else word
        out["severity_estimate"] = word
    return out


def parse_reading(text: str) -> ParsedReading:
    """The reply as a reading: strict JSON first, then a repaired form, else the reason."""
    stripped = text.strip()
    try:
        strict = json.loads(stripped)
    except json.JSONDecodeError as exc:
        strict, strict_error = None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    else:
        problems = validate(strict)
        if not problems:
            return ParsedReading(strict, True, False, None)
        strict_error = "; ".join(problems)
    candidates = _object_texts(stripped.replace("\u201c", '"').replace("\u201d", '"')
                               .replace("\u2018", "'").replace("\u2019", "'"))
    if not candidates:
        return ParsedReading(None, False, False, f"no JSON object in the reply ({strict_error})")
    error = f"{strict_error}; repair failed"
    for candidate in candidates:
        candidate = re.sub(r",\s*([}\]])", r"\1", candidate)  # trailing commas
        try:
            decoded = _decode(candidate)
        except (ValueError, SyntaxError):
            continue
        if not isinstance(decoded, dict):
            continue
        value = _coerce(decoded)
        problems = validate(value)
        if not problems:
            return ParsedReading(value, True, True, None)
        error = "; ".join(problems)
    return ParsedReading(None, False, False, error)
