"""Typed configs: dataclasses in, YAML presets and ``--set key=value`` overrides on top.

Every refusal is a ``ConfigError`` with one line naming the key, what was expected and, for
an unknown key, the nearest valid name::

    unknown key 'rl.lr'; did you mean 'rl.learning_rate'?
    wrong type for 'rl.batch_size': expected int, got 'abc'

Written by hand (not OmegaConf/Hydra) because those give multi-line tracebacks for the
refusals above and no nearest-name hint for nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from cluster.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
_NONE_WORDS = {"null", "none", "~", ""}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


# --- names -------------------------------------------------------------------------------
def _is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


def nearest(name: str, candidates: list[str]) -> str | None:
    """The valid name a user most likely meant (typos, abbreviations like lr -> learning_rate)."""
    best, best_score = None, 0.0
    for cand in candidates:
        score = difflib.SequenceMatcher(None, name.lower(), cand.lower()).ratio()
        if name and _is_subsequence(name.lower(), cand.lower()):
            score += 0.35
        initials = "".join(part[:1] for part in cand.split("_"))
        if name.lower() == initials.lower():
            score += 0.5
        if cand.startswith(name) or name.startswith(cand):
            score += 0.2
        if score > best_score:
            best, best_score = cand, score
    return best if best_score >= 0.45 else None


# Keys renamed so that the same hyperparameter has the same name in every pipeline; an old
# name is refused with its new one (a rename can be too far for the nearest-name guess).
RENAMED = {
    "rl.epochs": "rl.update_epochs",
    "rl.clip_eps": "rl.clip_range",
    "ppo.ppo_epochs": "ppo.update_epochs",
    "ppo.lam": "ppo.gae_lambda",
    "ppo.whiten_advantages": "ppo.normalize_advantages",
    # the RLHF data section holds every task; the melody corpus settings moved under data.melody
    **{f"data.{k}": f"data.melody.{k}" for k in ("collection", "files", "max_songs", "max_tokens",
                                                  "validation_fraction", "cache_dir", "prompt_bars")},
    "raters.preferences": "data.preferences",
}


def _unknown_key(key: str, prefix: str, valid: list[str]) -> ConfigError:
    full = f"{prefix}{key}"
    if full in RENAMED:
        return ConfigError(f"unknown key {full!r}: it was renamed to {RENAMED[full]!r}")
    guess = nearest(key, valid)
    if guess is not None:
        return ConfigError(f"unknown key {full!r}; did you mean {prefix + guess!r}?")
    where = f"under {prefix[:-1]!r}" if prefix else "at the top level"
    return ConfigError(f"unknown key {full!r}; valid keys {where}: {', '.join(sorted(valid))}")


# --- types -------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _wrong(key: str, tp: Any, value: Any) -> ConfigError:
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigError(f"wrong type for {key!r}: expected {type_name(tp)}, got {shown}")


def coerce(value: Any, tp: Any, key: str, from_text: bool = False) -> Any:
    """Check ``value`` against type ``tp``; ``from_text`` allows parsing a --set string."""
    origin = get_origin(tp)
    if tp is Any:
        return yaml.safe_load(value) if from_text and isinstance(value, str) else value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (from_text and str(value).strip().lower() in _NONE_WORDS)):
            return None
        finite_error = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, from_text)
            except ConfigError as exc:
                if "finite number" in str(exc):
                    finite_error = exc
        raise finite_error or _wrong(key, tp, value)
    if origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if value == a or (from_text and isinstance(value, str) and str(a) == value.strip()):
                return a
        guess = nearest(str(value), [str(a) for a in allowed])
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise ConfigError(f"invalid value {value!r} for {key!r}: expected one of {', '.join(map(str, allowed))}{hint}")
    if dataclasses.is_dataclass(tp):
        if from_text and isinstance(value, str):
            value = _safe_yaml(value, key)
        if not isinstance(value, dict):
            raise _wrong(key, tp, value)
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if from_text and isinstance(value, str):
            value = _safe_yaml(value, key)
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, tp, value)
        args = get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"wrong length for {key!r}: expected {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]", from_text) for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else Any
        items = [coerce(v, elem, f"{key}[{i}]", from_text) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if from_text and isinstance(value, str):
            value = _safe_yaml(value, key)
        if not isinstance(value, dict):
            raise _wrong(key, tp, value)
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(v, vt, f"{key}.{k}", from_text) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE_WORDS:
                return True
            if low in _FALSE_WORDS:
                return False
        raise _wrong(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if from_text and isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)
            except ValueError:
                try:
                    f = float(text)
                except ValueError:
                    raise _wrong(key, tp, value) from None
                if f.is_integer() and abs(f) < 2**53:
                    return int(f)
        raise _wrong(key, tp, value)
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; accept numeric text
            try:
                number = float(value.strip().replace("_", ""))
            except ValueError:
                pass
        if number is None:
            raise _wrong(key, tp, value)
        # every float setting is a finite number: NaN slips past every `x <= 0` range check
        if not math.isfinite(number):
            raise ConfigError(f"{key!r} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong(key, tp, value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _wrong(key, tp, value)


def _safe_yaml(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"cannot parse value for {key!r}: {text!r} is not valid YAML") from None


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def fields_of(cls: type) -> dict[str, Any]:
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) mapping; defaults fill the rest."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {prefix[:-1] or 'the config'!r}, got {data!r}")
    fields = fields_of(cls)
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key(str(key), prefix, list(fields))
        kwargs[key] = coerce(value, fields[key], f"{prefix}{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"incomplete config {prefix[:-1] or cls.__name__!r}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


# --- overrides -----------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError(f"cannot parse --set {text!r}; expected KEY=VALUE, e.g. --set rl.learning_rate=3e-4")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"cannot parse --set {text!r}; expected KEY=VALUE with a dotted key like rl.learning_rate")
    return key.split("."), value


def apply_override(cls: type, data: dict[str, Any], text: str) -> None:
    """Apply one ``a.b=value`` to the raw mapping ``data``, type-checked against ``cls``."""
    path, raw = parse_override(text)
    tp: Any = cls
    node = data
    for i, part in enumerate(path):
        prefix = ".".join(path[:i]) + "." if i else ""
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(path[:i])!r} is a {type_name(tp)}, it has no key {part!r}")
        fields = fields_of(tp)
        if part not in fields:
            raise _unknown_key(part, prefix, list(fields))
        tp = _strip_optional(fields[part])
        if i == len(path) - 1:
            node[part] = coerce(raw, fields[part], ".".join(path), from_text=True)
            if dataclasses.is_dataclass(node[part]):
                node[part] = to_dict(node[part])
        else:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


# --- files and presets --------------------------------------------------------------------
def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def list_presets() -> list[str]:
    """The pipeline configs among the presets (``sweep-*`` files are listed by ``list_sweeps``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("sweep-"))


def list_sweeps() -> list[str]:
    """The sweep files among the presets: ``reinforge tune sweep-<name>``."""
    return sorted(p.stem for p in PRESET_DIR.glob("sweep-*.yaml"))


def preset_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = PRESET_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    if p.suffix in (".yaml", ".yml"):
        raise ConfigError(f"config file {p} not found")
    guess = nearest(name, list_presets())
    hint = f"; did you mean {guess!r}?" if guess else f"; available: {', '.join(list_presets())}"
    raise ConfigError(f"unknown preset {name!r}{hint}")


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def build(cls: type, layers: list[dict[str, Any]], overrides: list[str] | None = None) -> Any:
    """Merge mappings in order, apply ``--set`` overrides, and build ``cls``."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, layer)
    from_dict(cls, data)  # refuse bad file keys before applying overrides (clearer blame)
    for text in overrides or []:
        apply_override(cls, data, text)
    return from_dict(cls, data)


__all__ = [
    "ConfigError", "apply_override", "build", "coerce", "from_dict", "list_presets", "load_yaml",
    "merge", "nearest", "parse_override", "preset_path", "to_dict", "to_yaml",
]
