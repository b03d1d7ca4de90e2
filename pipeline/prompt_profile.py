"""Prompt profiles of the MedGemma reading: how a prompt is laid out, as data.

A profile (one TOML file) states the message layout (a system text or none; one slice per
request, or the slices interleaved with text labels in one turn), the exact texts, how the
images are made (window, 2.5D channels, the share of the volume the slices come from), the
generation settings and how per-slice replies are combined into one reading. The shipped
profiles are pipeline/prompt_profiles/*.toml (``multi-slice``, the node's own prompt, and
``rsna-adapter-v1``, the published RSNA adapter's); a site adds its own as files in
``[pipeline.models.medgemma] prompt_profiles_dir``. An adapter directory may carry the
profile it was trained with (ADAPTER_FILE beside the weights; ``trauma-node
finetune-reading`` writes it); with ``prompt_profile = "auto"`` the reading uses it, else
``multi-slice``. The reading (pipeline.backends.medgemma_reading) and the fine-tuning data
(training.reading_data) both build their conversations from the profile, through the same
functions, so training cannot drift from reading.

Texts may hold placeholders in braces, filled in per request (``{index}``, ``{z_mm:.1f}``,
...: PLACEHOLDERS says which field takes which); any other brace is literal text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.reading_json import SCHEMA_TEXT, SEVERITIES

SHIPPED_DIR = Path(__file__).parent / "prompt_profiles"
ADAPTER_FILE = "prompt_profile.toml"  # beside adapter_config.json
DEFAULT = "multi-slice"
AUTO = "auto"
SETTING = "pipeline.models.medgemma.prompt_profile"
DIR_SETTING = "pipeline.models.medgemma.prompt_profiles_dir"
LAYOUTS = ("interleaved", "one-slice")
COMBINE = {"organs": ("union",), "severity": ("highest",), "extravasation": ("any",)}
PLACEHOLDERS = {
    "system": (),
    "instruction": ("schema",),
    "intro": ("count", "window_center", "window_width", "context_slices", "context_note"),
    "context_note": ("context_slices",),
    "slice_label": ("index", "z_mm"),
}
KEYS = {
    "": ("name", "version", "description", "messages", "images", "generation", "combine"),
    "messages": ("layout", "system", "instruction", "intro", "context_note", "slice_label",
                 "image_position"),
    "images": ("window_center", "window_width", "context_slices", "slice_range"),
    "generation": ("max_new_tokens", "do_sample", "reask"),
    "combine": tuple(COMBINE),
}
_FIELD = re.compile(r"\{(\w+)(?::([^{}]*))?\}")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PromptProfile:
    name: str
    version: str
    description: str
    layout: str  # interleaved | one-slice
    system: str  # "" for no system message
    instruction: str
    intro: str
    context_note: str
    slice_label: str
    image_position: str  # one-slice: the image before or after the instruction
    window_center: float | None  # None: the node's settings ([pipeline.models])
    window_width: float | None
    context_slices: int | None  # None: [pipeline.models.medgemma] context_slices
    slice_range: tuple[float, float]
    max_new_tokens: int | None  # None: [pipeline.models.medgemma] max_new_tokens
    reask: bool | None  # None: [pipeline.models.medgemma] reask
    combine: tuple[tuple[str, str], ...]
    file: str
    digest: str  # of the profile's data (not its comments)

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version} ({self.digest})"

    def slice_indices(self, count: int) -> range:
        """The slices this profile reads from, of a volume of ``count`` (at least one)."""
        start, stop = int(count * self.slice_range[0]), int(count * self.slice_range[1])
        if stop <= start:
            middle = min(count - 1, max(0, (start + stop) // 2))
            return range(middle, middle + 1)
        return range(start, stop)


@dataclass(frozen=True)
class Effective:
    """A profile's values with the node's settings filling the keys it leaves out."""

    window_center: float
    window_width: float
    context_slices: int
    max_new_tokens: int
    reask: bool


def effective(profile: PromptProfile, models: Any) -> Effective:
    gem = models.medgemma
    pick = lambda own, node: node if own is None else own  # noqa: E731
    return Effective(float(pick(profile.window_center, models.window_center)),
                     float(pick(profile.window_width, models.window_width)),
                     int(pick(profile.context_slices, gem.context_slices)),
                     int(pick(profile.max_new_tokens, gem.max_new_tokens)),
                     bool(pick(profile.reask, gem.reask)))


def render(template: str, **values: Any) -> str:
    """The template with its known placeholders filled in; other braces stay as they are."""
    def fill(match: re.Match[str]) -> str:
        name, spec = match.group(1), match.group(2) or ""
        return format(values[name], spec) if name in values else match.group(0)

    return _FIELD.sub(fill, template)


def render_instruction(profile: PromptProfile) -> str:
    return render(profile.instruction, schema=SCHEMA_TEXT)


# --- loading and validation ----------------------------------------------------------------

_SAMPLE = {"schema": SCHEMA_TEXT, "count": 3, "window_center": 50.0, "window_width": 400.0,
           "context_slices": 1, "context_note": "", "index": 7, "z_mm": -12.5}


def parse(data: dict[str, Any], where: str) -> PromptProfile:
    """A profile from its decoded TOML; ProfileError naming ``where`` and every bad key."""
    problems: list[str] = []

    def bad(key: str, why: str) -> None:
        problems.append(f"{key} {why}")

    for table, allowed in KEYS.items():
        section = data if not table else data.get(table, {})
        if not isinstance(section, dict):
            bad(table, "must be a table")
            continue
        for key in section:
            if key not in allowed:
                bad(f"{table + '.' if table else ''}{key}", f"is not a profile key (known: {', '.join(allowed)})")
    messages = _table(data, "messages")
    images = _table(data, "images")
    generation = _table(data, "generation")
    combine = _table(data, "combine")

    def text(section: dict[str, Any], table: str, key: str, required: bool = False) -> str:
        value = section.get(key, "")
        if not isinstance(value, str):
            bad(f"{table}.{key}" if table else key, "must be a string")
            return ""
        if required and not value.strip():
            bad(f"{table}.{key}" if table else key, "is required")
        if table == "messages":
            for match in _FIELD.finditer(value):
                if match.group(1) not in PLACEHOLDERS[key]:
                    bad(f"{table}.{key}", f"has the placeholder {{{match.group(1)}}}, not one of "
                                          f"{', '.join(PLACEHOLDERS[key]) or 'none'}")
            try:
                render(value, **{k: v for k, v in _SAMPLE.items() if k in PLACEHOLDERS[key]})
            except (ValueError, TypeError) as exc:
                bad(f"{table}.{key}", f"has a bad format in a placeholder ({exc})")
        return value

    def number(key: str, kind: type, check: Any, why: str) -> Any:
        if key not in images and key not in generation:
            return None
        section = images if key in KEYS["images"] else generation
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                or not check(value):
            bad(f"{'images' if section is images else 'generation'}.{key}", why)
            return None
        return kind(value)

    name = text(data, "", "name", required=True)
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        bad("name", f"= {name!r} may hold only letters, digits, '.', '_' and '-'")
    version = data.get("version", "1")
    if not isinstance(version, (str, int)) or isinstance(version, bool):
        bad("version", "must be a string")
    layout = messages.get("layout")
    if layout not in LAYOUTS:
        bad("messages.layout", f"= {layout!r} must be one of {', '.join(LAYOUTS)}")
    interleaved = layout == "interleaved"
    position = messages.get("image_position", "before")
    if position not in ("before", "after"):
        bad("messages.image_position", f"= {position!r} must be before or after")
    span = images.get("slice_range", [0.0, 1.0])
    if not (isinstance(span, list) and len(span) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in span)
            and 0 <= span[0] < span[1] <= 1):
        bad("images.slice_range", "must be [start, stop], fractions of the volume with 0 <= start < stop <= 1")
        span = [0.0, 1.0]
    do_sample = generation.get("do_sample", False)
    if do_sample is not False:
        bad("generation.do_sample", "must be false: the reading decodes greedily (reproducible)")
    reask = generation.get("reask")
    if reask is not None and not isinstance(reask, bool):
        bad("generation.reask", "must be true or false")
    for key, allowed in COMBINE.items():
        if combine.get(key, allowed[0]) not in allowed:
            bad(f"combine.{key}", f"= {combine.get(key)!r} must be {' or '.join(allowed)}")
    profile = PromptProfile(
        name=name, version=str(version), description=text(data, "", "description"),
        layout=str(layout), system=text(messages, "messages", "system"),
        instruction=text(messages, "messages", "instruction", required=True),
        intro=text(messages, "messages", "intro", required=interleaved),
        context_note=text(messages, "messages", "context_note"),
        slice_label=text(messages, "messages", "slice_label", required=interleaved),
        image_position=str(position),
        window_center=number("window_center", float, lambda v: -2000 <= v <= 4000,
                             "must be a number of HU in [-2000, 4000]"),
        window_width=number("window_width", float, lambda v: 0 < v <= 6000, "must be in (0, 6000] HU"),
        context_slices=number("context_slices", int, lambda v: 0 <= v <= 5, "must be an integer in 0..5"),
        slice_range=(float(span[0]), float(span[1])),
        max_new_tokens=number("max_new_tokens", int, lambda v: 16 <= v <= 8192,
                              "must be an integer in 16..8192"),
        reask=reask if isinstance(reask, bool) else None,
        combine=tuple((k, str(combine.get(k, v[0]))) for k, v in COMBINE.items()),
        file=where, digest=_digest(data))
    if problems:
        raise ProfileError(f"prompt profile {where}: " + "; ".join(problems))
    return profile


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    return value if isinstance(value, dict) else {}


def _digest(data: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def load_file(path: Path | str) -> PromptProfile:
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ProfileError(f"prompt profile {path}: cannot be read ({exc.strerror or exc})") from exc
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> PromptProfile:
    """Cached by time and size: settings are validated once per series."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"prompt profile {path}: cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"prompt profile {path}: not valid TOML ({exc})") from exc
    return parse(data, path)


def _directory(folder: Path) -> dict[str, PromptProfile]:
    found: dict[str, PromptProfile] = {}
    for path in sorted(folder.glob("*.toml")):
        profile = load_file(path)
        if profile.name != path.stem:
            raise ProfileError(f"prompt profile {path}: name = {profile.name!r} must be the file's name "
                               f"({path.stem!r})")
        found[profile.name] = profile
    return found


def shipped() -> dict[str, PromptProfile]:
    return _directory(SHIPPED_DIR)


def available(site_dir: str = "") -> dict[str, PromptProfile]:
    """Every profile by name: the shipped ones, and the site's (which may not reuse a shipped name)."""
    profiles = shipped()
    if site_dir.strip():
        folder = Path(site_dir).expanduser()
        if not folder.is_dir():
            raise ProfileError(f"{DIR_SETTING} = {site_dir!r}: no such directory")
        for name, profile in _directory(folder).items():
            if name in profiles:
                raise ProfileError(f"prompt profile {profile.file}: name = {name!r} is a shipped profile's "
                                   f"name; give the site's profile a name of its own")
            profiles[name] = profile
    return profiles


def named(name: str, site_dir: str = "") -> PromptProfile:
    profiles = available(site_dir)
    if name not in profiles:
        raise ProfileError(f"{SETTING} = {name!r}: no such prompt profile (known: "
                           f"{', '.join(sorted(profiles))}; a site's own go in {DIR_SETTING})")
    return profiles[name]


def adapter_file(gem: Any) -> Path | None:
    """The profile file an adapter carries (a local directory, or a hub id in the local cache)."""
    value = gem.adapter.strip()
    if not value:
        return None
    from pipeline.models.loading import resolve

    source = resolve(value, "pipeline.models.medgemma.adapter")
    if source.local is not None:
        path = source.local / ADAPTER_FILE
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(value, ADAPTER_FILE)
    return Path(cached) if isinstance(cached, str) else None


@dataclass(frozen=True)
class Chosen:
    """The profile a reading uses, and why."""

    profile: PromptProfile
    source: str  # configured | adapter | default
    adapter_profile: str | None = None  # the adapter's own profile, when it carries one

    def reason(self) -> str:
        if self.source == "adapter":
            return f"the adapter's own profile ({self.profile.file})"
        if self.source == "default":
            return f"the default ({SETTING} = \"auto\", the adapter carries no {ADAPTER_FILE})"
        if self.adapter_profile and self.adapter_profile != self.profile.label:
            return f"configured ({SETTING}), overriding the adapter's own profile {self.adapter_profile}"
        return f"configured ({SETTING})"

    def record(self) -> dict[str, Any]:
        p = self.profile
        return {"name": p.name, "version": p.version, "digest": p.digest, "layout": p.layout,
                "file": p.file, "source": self.source, "reason": self.reason(),
                "adapter_profile": self.adapter_profile}


def choose(gem: Any, use_adapter: bool = True) -> Chosen:
    """The profile for these MedGemma settings: the configured one; with "auto", the adapter's own
    (when the adapter is used for the reading and carries one), else multi-slice."""
    own = adapter_file(gem) if use_adapter and gem.adapter_in_reading else None
    adapter_profile = load_file(own) if own is not None else None
    if gem.prompt_profile.strip() != AUTO:
        return Chosen(named(gem.prompt_profile.strip(), gem.prompt_profiles_dir), "configured",
                      adapter_profile.label if adapter_profile else None)
    if adapter_profile is not None:
        return Chosen(adapter_profile, "adapter", adapter_profile.label)
    return Chosen(named(DEFAULT, gem.prompt_profiles_dir), "default")


def problems(models: Any) -> list[str]:
    """What stops start-up: an unknown or malformed profile, naming the setting and the key."""
    gem = models.medgemma
    try:
        available(gem.prompt_profiles_dir)
        choose(gem)
    except ProfileError as exc:
        return [str(exc)]
    return []


# --- the adapter's file ----------------------------------------------------------------------

def to_toml(profile: PromptProfile, models: Any, comment: str = "") -> str:
    """The profile with the node's settings filled in, as the TOML an adapter carries."""
    values = effective(profile, models)
    data: dict[str, Any] = {
        "name": profile.name, "version": profile.version, "description": profile.description,
        "messages": {"layout": profile.layout, "system": profile.system, "instruction": profile.instruction,
                     **({"intro": profile.intro, "context_note": profile.context_note,
                         "slice_label": profile.slice_label} if profile.layout == "interleaved"
                        else {"image_position": profile.image_position})},
        "images": {"window_center": values.window_center, "window_width": values.window_width,
                   "context_slices": values.context_slices, "slice_range": list(profile.slice_range)},
        "generation": {"max_new_tokens": values.max_new_tokens, "do_sample": False, "reask": values.reask},
        "combine": dict(profile.combine),
    }
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table, items in tables:
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


# --- per-slice replies into one reading --------------------------------------------------------

def combine(replies: list[tuple[int, dict[str, Any] | None]]) -> dict[str, Any]:
    """One reading from the per-slice readings ((slice index, the parsed reply or None), in
    anatomical order), as the profiles' [combine] says: organs as the union, severity as the
    highest, active extravasation when any slice says so (those slices kept); the texts of the
    slices that found an injury (all when none did), each with its slices. Needs one valid reply."""
    from pipeline.reconcile import mentions_extravasation

    valid = [(k, r) for k, r in replies if r is not None]
    if not valid:
        raise ValueError("no valid per-slice reply to combine")
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    severity = max((r["severity_estimate"] for _, r in valid), key=rank.__getitem__)
    injured = [(k, r) for k, r in valid if r["severity_estimate"] != "none"] or valid
    blush = [k for k, r in valid
             if mentions_extravasation(r["injury_pattern"] + " . " + r["bleeding_description"])]
    by_severity: dict[str, list[int]] = {}
    for k, r in valid:
        by_severity.setdefault(r["severity_estimate"], []).append(k)
    disagreements = []
    if len(by_severity) > 1:
        disagreements.append("the slices disagree on severity: " + "; ".join(
            f"{s} on {_slices(ks)}" for s, ks in sorted(by_severity.items(), key=lambda i: rank[i[0]])))
    if blush and len(blush) < len(valid):
        disagreements.append(f"active extravasation on {_slices(blush)} only")
    return {
        "injury_pattern": _grouped(injured, "injury_pattern"),
        "organs_involved": _union(r["organs_involved"] for _, r in valid),
        "bleeding_description": _grouped(injured, "bleeding_description"),
        "severity_estimate": severity,
        "differential_diagnosis": _union(r["differential_diagnosis"] for _, r in valid),
        "extravasation": {"any": bool(blush), "slices": blush},
        "slice_disagreements": disagreements,
    }


def _slices(indices: list[int]) -> str:
    return ("slice " if len(indices) == 1 else "slices ") + ", ".join(str(k) for k in indices)


def _union(lists: Any) -> list[str]:
    seen: dict[str, str] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item.strip().lower(), item.strip())
    return [v for v in seen.values() if v]


def _grouped(replies: list[tuple[int, dict[str, Any]]], key: str) -> str:
    texts: dict[str, list[int]] = {}
    for k, r in replies:
        texts.setdefault(r[key].strip(), []).append(k)
    if len(texts) == 1:
        return next(iter(texts))
    return "; ".join(f"{text} ({_slices(ks)})" for text, ks in texts.items())
