"""Untrusted files: checkpoints and weights load without running code, and damaged files fail
with errors that name them (or, for the weights cache, are converted again).

The malicious payload is a pickle whose ``__reduce__`` creates a marker file: a loader that
unpickles it leaves the marker behind.
"""
from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from _toy import ToyData, ToyModel
from safetensors.torch import load_file, save_file

import mmcore
import mmcore.weights as weights
from mmcore.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from mmcore.config import Config, ModelConfig
from mmcore.runtime import build_loader, seed_everything
from mmcore.train import fit


class _CreatesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _CreatesMarker(marker)}, protocol=2)


def test_the_payload_runs_code_when_unpickled(tmp_path):
    """The other tests' payload is live: unpickling it creates the marker."""
    pickle.loads(_payload(tmp_path / "marker"))
    assert (tmp_path / "marker").exists()


# --- checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl", ".bin", ".ckpt"])
def test_pickle_checkpoints_are_refused_before_they_are_read(tmp_path, suffix):
    path, marker = tmp_path / f"model{suffix}", tmp_path / "marker"
    path.write_bytes(_payload(marker))
    with pytest.raises(CheckpointError, match=rf"refusing to load {re.escape(str(path))}.*"
                                              r"unpickling can execute code"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path, ToyModel())
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "model.safetensors", tmp_path / "marker"
    path.write_bytes(_payload(marker))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} is not a readable "
                                              "safetensors file"):
        load_checkpoint(path, ToyModel())
    assert not marker.exists()


def _header_length_too_large(data: bytes) -> bytes:
    return struct.pack("<Q", 2**40) + data[8:]


def _header_not_json(data: bytes) -> bytes:
    return data[:8] + b"#" * 16 + data[24:]


def _truncated(data: bytes) -> bytes:
    return data[:len(data) - 100]


def _empty(data: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("damage", [_header_length_too_large, _header_not_json, _truncated,
                                    _empty])
def test_a_damaged_checkpoint_gives_an_error_naming_the_file(tmp_path, damage):
    path = save_checkpoint(tmp_path / "last.safetensors", ToyModel(), {"kind": "test"})
    read_checkpoint(path)  # intact, it reads
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_checkpoint(path)


def test_a_corrupt_metadata_document_gives_an_error_naming_the_file(tmp_path):
    path = tmp_path / "last.safetensors"
    save_file({"model.w": torch.zeros(2)}, path, metadata={"mmcore": '{"format": 1,'})
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} has a corrupt 'mmcore'"):
        read_checkpoint(path)


def test_resuming_from_a_damaged_checkpoint_names_it(tmp_path):
    cfg = Config.from_params(epochs=1, batch_size=16, progress=False, precision="fp32",
                             device="cpu")
    data = ToyData(32)

    def run() -> None:
        seed_everything(0)
        fit(ToyModel(), build_loader(data, 16, data.collate, train=True), None, cfg, tmp_path,
            resume=True)

    run()
    last = tmp_path / "checkpoints/last.safetensors"
    last.write_bytes(_truncated(last.read_bytes()))
    with pytest.raises(CheckpointError, match=re.escape(str(last))):
        run()


def test_mmcore_has_no_code_path_that_unpickles():
    """Every load in the package is safetensors or JSON: no pickle, no unsafe torch.load."""
    unsafe = re.compile(r"^\s*(import pickle|from pickle|import dill|import joblib)|"
                        r"pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)", re.M)
    sources = sorted(Path(mmcore.__file__).parent.rglob("*.py"))
    assert len(sources) > 10
    found = [f"{p.name}: {m.group(0).strip()}" for p in sources
             for m in unsafe.finditer(p.read_text())]
    assert not found


# --- the DINOv2 weights cache ---------------------------------------------------------------


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch) -> list[int]:
    """An empty ``$MMCORE_CACHE`` and a stand-in for the ONNX conversion; counts conversions."""
    conversions: list[int] = []

    def convert(state: dict, image_size: int) -> dict[str, torch.Tensor]:
        conversions.append(image_size)
        return {"pos_embed": torch.arange(6.0).reshape(1, 2, 3) + image_size}

    monkeypatch.setenv("MMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "dinov2_onnx_path", lambda: tmp_path / "unused.onnx")
    monkeypatch.setattr(weights, "read_dinov2_onnx", lambda path: {})
    monkeypatch.setattr(weights, "dinov2_to_timm", convert)
    return conversions


def _cache_file(image_size: int) -> Path:
    (path,) = weights.cache_dir().glob(f"dinov2_*_{image_size}px.safetensors")
    return path


def test_the_weights_cache_is_read_with_safetensors_only(fake_conversion, monkeypatch):
    first = weights.offline_image_state_dict(28)
    assert fake_conversion == [28] and list(load_file(_cache_file(28))) == ["pos_embed"]

    def refuse(*args, **kwargs):
        raise AssertionError("the weights cache was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    cached = weights.offline_image_state_dict(28)
    assert fake_conversion == [28]  # read from the cache, not converted again
    assert torch.equal(cached["pos_embed"], first["pos_embed"])


@pytest.mark.parametrize("damage", ["truncated", "pickle"])
def test_a_corrupt_weights_cache_is_converted_again(tmp_path, fake_conversion, damage):
    weights.offline_image_state_dict(28)
    path, marker = _cache_file(28), tmp_path / "marker"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncated" else _payload(marker))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))} is corrupt .*converting"):
        state = weights.offline_image_state_dict(28)
    assert fake_conversion == [28, 28] and not marker.exists()
    assert torch.equal(load_file(path)["pos_embed"], state["pos_embed"])  # rewritten whole


# --- user-supplied weights in pickle formats ------------------------------------------------


@pytest.mark.slow
def test_pickled_image_weights_are_refused_without_running_them(tmp_path):
    path, marker = tmp_path / "vit.pth", tmp_path / "marker"
    path.write_bytes(_payload(marker))
    with pytest.raises(Exception, match="weights_only"):
        weights.load_image_backbone(ModelConfig(image_encoder=str(path)))
    assert not marker.exists()


def test_pickled_text_weights_are_refused_without_running_them(tmp_path):
    from transformers import BertConfig

    folder, marker = tmp_path / "bert", tmp_path / "marker"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(_payload(marker))
    with pytest.raises(Exception, match="weights_only"):
        weights.load_text_backbone(ModelConfig(text_encoder=str(folder)))
    assert not marker.exists()
