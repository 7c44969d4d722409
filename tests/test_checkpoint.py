"""Checkpoints: round trip, rotation, `latest`, refusal of truncated/corrupt files, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster import checkpoint as ck
from cluster.errors import CheckpointError


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_model_optimizer_and_state(tmp_path):
    model, opt = _model_and_opt()
    state = {"step": 7, "epsilon": 0.25, "rng": np.arange(5), "nested": {"a": [1, 2.5, None], "t": (1, "x")}}
    path = ck.save_checkpoint(tmp_path, 7, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state})
    assert path.name == "step_000000007" and (path / "model.safetensors").is_file()
    loaded = ck.load_checkpoint(tmp_path)
    assert loaded.step == 7
    model2, opt2 = _model_and_opt()
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    model2.load_state_dict(loaded["model"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-3
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], exp_avg)
    s = loaded["state"]
    assert s["step"] == 7 and s["epsilon"] == 0.25 and np.array_equal(s["rng"], np.arange(5))
    assert s["nested"] == {"a": [1, 2.5, None], "t": (1, "x")}
    with pytest.raises(CheckpointError, match="has no 'critic'"):
        loaded["critic"]


def test_rotation_keeps_last_k_and_latest_resolves(tmp_path):
    for step in (10, 20, 30, 40):
        ck.save_checkpoint(tmp_path, step, {"state": {"step": step}, "w": {"x": torch.full((2,), float(step))}}, keep=2)
    kept = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert kept == ["step_000000030", "step_000000040"]
    assert ck.load_checkpoint(tmp_path / "latest").step == 40
    assert ck.resolve_checkpoint(tmp_path) == tmp_path / "step_000000040"


def test_truncated_file_is_refused_with_one_line(tmp_path):
    model, _ = _model_and_opt()
    path = ck.save_checkpoint(tmp_path, 1, {"model": model.state_dict()})
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint(path)
    assert "model.safetensors" in str(info.value) and "truncated" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_bytes_and_manifest_are_refused(tmp_path):
    model, _ = _model_and_opt()
    path = ck.save_checkpoint(tmp_path, 1, {"model": model.state_dict()})
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.load_checkpoint(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint manifest"):
        ck.load_checkpoint(path)


def test_pickle_is_never_loaded(tmp_path):
    """A checkpoint directory holding a pickle (e.g. a torch.save file) is not a checkpoint."""
    d = tmp_path / "step_000000001"
    d.mkdir()
    torch.save({"x": 1}, d / "model.pt")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ck.load_checkpoint(tmp_path)


def test_crash_between_write_and_rename_leaves_old_checkpoint(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, 1, {"w": {"x": torch.ones(3)}})

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr("pathlib.Path.rename", lambda self, target: crash(self, target))
    with pytest.raises(OSError, match="simulated crash"):
        ck.save_checkpoint(tmp_path, 2, {"w": {"x": torch.zeros(3)}})
    monkeypatch.undo()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_000000001"], names  # no half-written step_2, no temp dir left behind
    assert torch.equal(ck.load_checkpoint(tmp_path)["w"]["x"], torch.ones(3))


def test_killed_writer_leaves_only_complete_checkpoints(tmp_path):
    """A temp dir left by a killed process is ignored by `latest`."""
    ck.save_checkpoint(tmp_path, 5, {"w": {"x": torch.ones(1)}})
    stale = tmp_path / ".tmp-step_000000009-123-456"
    stale.mkdir()
    (stale / "w.safetensors").write_bytes(b"partial")
    incomplete = tmp_path / "step_000000010"
    incomplete.mkdir()  # no manifest: never complete
    assert ck.load_checkpoint(tmp_path).step == 5
    manifest = json.loads((tmp_path / "step_000000005" / "manifest.json").read_text())
    assert manifest["files"]["w.safetensors"]["sha256"]


def test_unsupported_objects_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cannot checkpoint a object"):
        ck.save_checkpoint(tmp_path, 1, {"state": {"bad": object()}})
    assert ck.list_checkpoints(tmp_path) == [] and not any(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope")
