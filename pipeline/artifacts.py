"""Models and checkpoints as safetensors: bytes for the database, a folder for people.

A model is its config, vocabulary and weights. Loading rebuilds it from those alone and
never unpickles anything."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch

from . import modelfile
from .errors import ModelLoadError
from .model import TenseCVAE

FORMAT = modelfile.FORMAT
CHECKPOINT_FORMAT = "tensevae-checkpoint/1"
_MAX_HEADER = 10_000_000


def describe(model: TenseCVAE, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"format": FORMAT, "model": dataclasses.asdict(model.config), "vocab": model.vocab.chars}
    return {**meta, "digest": digest(meta, model.state_dict()), **(extra or {})}


def digest(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """modelfile.digest over the weights' bytes."""
    return modelfile.digest(meta, _arrays(tensors))


def _arrays(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}


def _pack(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def _unpack(data: bytes, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of safetensors bytes; anything malformed is a ModelLoadError."""
    from safetensors.torch import load

    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < 8:
        raise ModelLoadError(f"{what}: too short to be a safetensors file")
    data = bytes(data)
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise ModelLoadError(f"{what}: truncated or not a safetensors file")
    try:
        header = json.loads(data[8 : 8 + n])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
    except Exception as e:  # safetensors raises several types for damaged files
        raise ModelLoadError(f"{what}: damaged safetensors data ({type(e).__name__})") from None
    return tensors, metadata


def _build(meta: dict[str, Any], what: str) -> TenseCVAE:
    return TenseCVAE(*modelfile.read_config(meta, what))


def _load_weights(model: TenseCVAE, tensors: dict[str, torch.Tensor], what: str) -> TenseCVAE:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelLoadError(
            f"{what}: weights do not fit the config (missing {missing[:3]}, extra {extra[:3]})"
        )
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise ModelLoadError(
                f"{what}: {k} has shape {tuple(v.shape)}, the config needs "
                f"{tuple(expected[k].shape)} (vocabulary or size mismatch)"
            )
        if not torch.isfinite(v).all():
            raise ModelLoadError(f"{what}: {k} holds NaN or infinite values")
    model.load_state_dict(tensors)
    return model.eval()


def _verify(meta: dict[str, Any], tensors: dict[str, torch.Tensor], what: str) -> None:
    modelfile.verify(meta, _arrays(tensors), what)


def to_bytes(model: TenseCVAE, extra: dict[str, Any] | None = None) -> bytes:
    """The model as one safetensors blob whose metadata holds config and vocabulary."""
    return _pack(model.state_dict(), {"tensevae": json.dumps(describe(model, extra))})


def from_bytes(data: bytes, what: str = "model bytes") -> TenseCVAE:
    return _from_bytes(data, what)[0]


def _from_bytes(data: bytes, what: str) -> tuple[TenseCVAE, dict[str, Any]]:
    """The model of to_bytes' blob, and the metadata it carries."""
    tensors, metadata = _unpack(data, what)
    try:
        meta = json.loads(metadata["tensevae"])
    except (KeyError, json.JSONDecodeError):
        raise ModelLoadError(f"{what}: no tensevae config in the metadata") from None
    model = _load_weights(_build(meta, what), tensors, what)
    _verify(meta, tensors, what)
    return model, meta


def bytes_to_folder(
    data: bytes, folder: str | Path, what: str = "model bytes", extra: dict[str, Any] | None = None
) -> Path:
    """A model stored as bytes (to_bytes, as the database keeps it) written as a folder
    (save), with what its bytes carried beside the weights (its training config, its job)
    and ``extra``; checked as any load is before anything is written."""
    model, meta = _from_bytes(data, what)
    carried = {k: v for k, v in meta.items() if k not in ("format", "model", "vocab", "digest")}
    return save(model, folder, {**carried, **(extra or {})})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(model: TenseCVAE, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = describe(model, extra)
    (folder / modelfile.CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (folder / modelfile.WEIGHTS_FILE).write_bytes(_pack(model.state_dict(), {"format": FORMAT}))
    return folder


def load(folder: str | Path, device: str | torch.device = "cpu") -> TenseCVAE:
    """Rebuild a model saved by ``save``; any problem is one ModelLoadError line."""
    meta, weights = modelfile.read_folder(folder)
    cfg = Path(folder) / modelfile.CONFIG_FILE
    tensors, _ = _unpack(weights.read_bytes(), str(weights))
    model = _load_weights(_build(meta, str(cfg)), tensors, str(weights))
    _verify(meta, tensors, str(folder))
    return model.to(device)


def metadata(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / modelfile.CONFIG_FILE).read_text(encoding="utf-8"))


pretrained_path = modelfile.pretrained_path


def load_pretrained(device: str | torch.device = "cpu") -> TenseCVAE:
    """The model shipped with tensevae (made by ``configs/default.yaml``)."""
    return load(pretrained_path(), device)


# Checkpoints: model weights, optimizer state, random state and history, to resume from.


def checkpoint_to_bytes(
    model: TenseCVAE,
    optimizer: torch.optim.Optimizer,
    rng: torch.Tensor,
    state: dict[str, Any],
    best: dict[str, torch.Tensor] | None = None,
    ema: list[torch.Tensor] | None = None,
) -> bytes:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in opt["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng"] = rng
    tensors["torch_rng"] = torch.get_rng_state()  # dropout draws from torch's global generator
    for k, v in (best or {}).items():
        tensors[f"best.{k}"] = v
    for i, v in enumerate(ema or []):  # the weights' moving average, by parameter order
        tensors[f"ema.{i}"] = v
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": describe(model),
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "state": state,
    }
    return _pack(tensors, {"tensevae": json.dumps(meta)})


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    """Parts of a checkpoint: model, optimizer state dict, rng, state, best weights, and the
    weights' moving average (train.ema) as a list in the model's parameter order."""
    what = "checkpoint"
    tensors, metadata = _unpack(data, what)
    try:
        meta = json.loads(metadata["tensevae"])
    except (KeyError, json.JSONDecodeError):
        raise ModelLoadError(f"{what}: no tensevae metadata") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{what}: format {meta.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
    model = _build(meta["model"], what)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_weights(model, weights, what)
    _verify(meta["model"], weights, what)
    slots: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, key = k.split(".", 2)
            slots.setdefault(int(pid), {})[key] = v
    for pid, extra in meta["optim_scalars"].items():
        slots.setdefault(int(pid), {}).update(extra)
    averaged = sum(k.startswith("ema.") for k in tensors)
    return {
        "model": model,
        "optimizer": {"state": slots, "param_groups": meta["param_groups"]},
        "rng": tensors["rng"],
        "torch_rng": tensors.get("torch_rng"),
        "state": meta["state"],
        "best": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None,
        "ema": [tensors[f"ema.{i}"] for i in range(averaged)] or None,
    }
