"""Checkpoints: safetensors for tensors, JSON for everything else; atomic, rotated, verified.

Layout of one checkpoint (a directory)::

    checkpoints/step_000012000/
        model.safetensors        one file per named object that holds tensors
        optimizer.safetensors
        manifest.json            structure of every object, sizes and sha256 of every file

Each checkpoint is written into a hidden temporary directory beside its final place and
renamed when complete, so a crash leaves either the old set or the new one, never half of
one. Nothing is ever unpickled: structures are JSON, tensors are safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cluster.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- flattening nested state (state_dicts, optimizer states, RNG states) -------------------
def _flatten(obj: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """Replace every tensor/ndarray in a nested structure by a reference into ``tensors``."""
    import torch

    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = prefix or "_"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint keys must be str or int, got {type(k).__name__} at {prefix!r}")
            tag = f"i:{k}" if isinstance(k, int) else str(k)
            out[tag] = _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)
        return {"__dict__": out}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot checkpoint a {type(obj).__name__} at {prefix!r}: only tensors, arrays and JSON values")


def _unflatten(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {
                (int(k[2:]) if k.startswith("i:") else k): _unflatten(v, tensors) for k, v in obj["__dict__"].items()
            }
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    path: Path
    step: int
    objects: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name not in self.objects:
            raise CheckpointError(f"checkpoint {self.path} has no {name!r}; it holds {sorted(self.objects)}")
        return self.objects[name]


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    objects: dict[str, Any],
    keep: int | None = 3,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``objects`` (name -> nested structure of tensors/arrays/JSON) as ``step_<step>``.

    Returns the final path. ``keep`` newest complete checkpoints are kept (None keeps all).
    """
    from safetensors.torch import save_file

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{int(step):09d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "time": time.time(),
            "metadata": metadata or {},
            "objects": {},
            "files": {},
        }
        for name, obj in objects.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise CheckpointError(f"checkpoint object name {name!r} must be letters, digits, '_', '.' or '-'")
            tensors: dict[str, Any] = {}
            manifest["objects"][name] = _flatten(obj, "", tensors)
            if tensors:
                fname = f"{name}.safetensors"
                save_file(tensors, str(tmp / fname))
                manifest["files"][fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after resume): replace atomically
            old = root / f".old-{final.name}-{time.time_ns()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None and keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (those with a manifest) under ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint dir, a ``checkpoints/`` dir, a run dir, or ``.../latest``."""
    p = Path(path)
    if p.name == "latest":
        p = p.parent
    if (p / MANIFEST).is_file():
        return p
    for candidate in (p, p / "checkpoints"):
        ckpts = list_checkpoints(candidate)
        if ckpts:
            valid = latest_valid_checkpoint(candidate)
            if valid is None:  # every one is damaged: raise what is wrong with the newest
                check_checkpoint(ckpts[-1])
            return valid or ckpts[-1]
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist")
    raise CheckpointError(f"no complete checkpoint found in {p} (expected step_*/manifest.json or a run dir with checkpoints/)")


def _read_manifest(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any], int, dict[str, Any]]:
    """(files, objects, step, manifest) of a checkpoint dir, every file name confined to it."""
    mpath = ckpt / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        files, objects = manifest["files"], manifest["objects"]
        step = int(manifest["step"])
        if not isinstance(files, dict) or not isinstance(objects, dict):
            raise TypeError
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError):
        raise CheckpointError(f"corrupt checkpoint manifest {mpath}; delete that checkpoint to fall back to an older one") from None
    for fname, info in files.items():
        # a manifest names files inside its own directory only (no '..', no subdirectories)
        if (not isinstance(fname, str) or Path(fname).name != fname or fname in (".", "..")
                or not fname.endswith(".safetensors") or not isinstance(info, dict)):
            raise CheckpointError(f"checkpoint manifest {mpath} names {str(fname)[:80]!r}, which is not a "
                                  "safetensors file inside the checkpoint; refusing it")
    return files, objects, step, manifest


# checkpoints whose sha256s matched, keyed by their files' (name, size, mtime): a resume checks
# the newest checkpoint before Ray starts, again when the run dir opens, and once more when it
# loads; hashing a large model each time would be the same work three times
_VERIFIED: set[tuple] = set()


def check_checkpoint(ckpt: Path, verify: bool = True) -> None:
    """Raise CheckpointError unless every file the manifest lists is there, whole, and (with
    ``verify``) matches its sha256."""
    files, _, _, _ = _read_manifest(ckpt)
    stats = []
    for fname in [MANIFEST, *files]:
        try:
            st = (ckpt / fname).stat()
            stats.append((fname, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((fname, -1, -1))
    key = (str(ckpt.resolve()), tuple(stats))
    if verify and key in _VERIFIED:
        return
    for fname, info in files.items():
        fpath = ckpt / fname
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint file {fpath} is missing")
        size = fpath.stat().st_size
        if size != info.get("bytes"):
            raise CheckpointError(f"checkpoint file {fpath} is truncated or altered ({size} bytes, expected {info.get('bytes')})")
        if verify and _sha256(fpath) != info.get("sha256"):
            raise CheckpointError(f"checkpoint file {fpath} is corrupt (sha256 mismatch)")
    if verify:
        _VERIFIED.add(key)


def latest_valid_checkpoint(directory: str | os.PathLike, warn=None) -> Path | None:
    """The newest complete checkpoint under ``directory`` that passes :func:`check_checkpoint`;
    a damaged newer one is skipped with a warning (``warn(message)``, default stderr)."""
    import sys

    for ckpt in reversed(list_checkpoints(directory)):
        try:
            check_checkpoint(ckpt)
            return ckpt
        except CheckpointError as exc:
            (warn or (lambda m: print(m, file=sys.stderr, flush=True)))(
                f"reinforge: warning: skipping damaged checkpoint {ckpt.name} ({exc})")
    return None


def load_checkpoint(path: str | os.PathLike, verify: bool = True, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint``; corrupt or truncated files are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(path)
    check_checkpoint(ckpt, verify=verify)
    files, objects, step, manifest = _read_manifest(ckpt)
    by_file: dict[str, dict[str, Any]] = {}
    for fname in files:
        fpath = ckpt / fname
        try:
            loaded = load_file(str(fpath), device=map_location)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint file {fpath} cannot be read: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        by_file[fname] = loaded
    try:
        restored = {name: _unflatten(struct, by_file.get(f"{name}.safetensors", {})) for name, struct in objects.items()}
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {ckpt} references missing tensor {exc}") from None
    return Checkpoint(path=ckpt, step=step, objects=restored, metadata=manifest.get("metadata", {}))
