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

from .config import ModelConfig
from .errors import ModelLoadError
from .model import TenseCVAE
from .vocab import Vocab

FORMAT = "tensevae-model/1"
CHECKPOINT_FORMAT = "tensevae-checkpoint/1"
_MAX_HEADER = 10_000_000


def describe(model: TenseCVAE, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"format": FORMAT, "model": dataclasses.asdict(model.config), "vocab": model.vocab.chars}
    return {**meta, "digest": digest(meta, model.state_dict()), **(extra or {})}


def digest(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over config, vocabulary and weights: a damaged or edited model fails to load
    rather than converting with the wrong alphabet."""
    h = hashlib.sha256(json.dumps([meta.get("model"), meta.get("vocab")], sort_keys=True).encode())
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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


_SIZE_LIMIT = 16384  # no real tensevae model comes near; guards against absurd allocations


def _build(meta: dict[str, Any], what: str) -> TenseCVAE:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelLoadError(f"{what}: format {found!r} is not {FORMAT!r}")
    try:
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = set(meta["model"]) - known
        if unknown:
            raise ModelLoadError(f"{what}: config has keys this version lacks: {sorted(unknown)}")
        config = ModelConfig(**meta["model"])
        sizes = (
            config.hidden_size,
            config.latent_size,
            config.tense_embedding,
            config.char_embedding,
            config.latent_memory_size,
        )
        if (
            not isinstance(config.latent_memory, int)
            or not 0 <= config.latent_memory <= _SIZE_LIMIT
        ):
            raise ModelLoadError(f"{what}: memory size {config.latent_memory!r} is not plausible")
        if not all(isinstance(n, int) and 0 < n <= _SIZE_LIMIT for n in sizes):
            raise ModelLoadError(f"{what}: config sizes {sizes} are not plausible")
        return TenseCVAE(config, Vocab(meta["vocab"]))
    except ModelLoadError:
        raise
    except Exception as e:  # any other malformed value in a config read from outside
        raise ModelLoadError(
            f"{what}: config or vocabulary unreadable ({type(e).__name__})"
        ) from None


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
    if "digest" in meta and digest(meta, tensors) != meta["digest"]:
        raise ModelLoadError(
            f"{what}: config, vocabulary and weights do not match their checksum "
            "(damaged or edited)"
        )


def to_bytes(model: TenseCVAE, extra: dict[str, Any] | None = None) -> bytes:
    """The model as one safetensors blob whose metadata holds config and vocabulary."""
    return _pack(model.state_dict(), {"tensevae": json.dumps(describe(model, extra))})


def from_bytes(data: bytes, what: str = "model bytes") -> TenseCVAE:
    tensors, metadata = _unpack(data, what)
    try:
        meta = json.loads(metadata["tensevae"])
    except (KeyError, json.JSONDecodeError):
        raise ModelLoadError(f"{what}: no tensevae config in the metadata") from None
    model = _load_weights(_build(meta, what), tensors, what)
    _verify(meta, tensors, what)
    return model


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(model: TenseCVAE, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = describe(model, extra)
    (folder / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (folder / "model.safetensors").write_bytes(_pack(model.state_dict(), {"format": FORMAT}))
    return folder


def load(folder: str | Path, device: str | torch.device = "cpu") -> TenseCVAE:
    """Rebuild a model saved by ``save``; any problem is one ModelLoadError line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    cfg, weights = folder / "config.json", folder / "model.safetensors"
    for f in (cfg, weights):
        if not f.is_file():
            raise ModelLoadError(f"{folder}: {f.name} is missing")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{cfg}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{cfg}: not a tensevae model config")
    tensors, _ = _unpack(weights.read_bytes(), str(weights))
    model = _load_weights(_build(meta, str(cfg)), tensors, str(weights))
    _verify(meta, tensors, str(folder))
    return model.to(device)


def metadata(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def pretrained_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "pretrained"


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
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": describe(model),
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "state": state,
    }
    return _pack(tensors, {"tensevae": json.dumps(meta)})


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    """Parts of a checkpoint: model, optimizer state dict, rng, state, best weights."""
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
    return {
        "model": model,
        "optimizer": {"state": slots, "param_groups": meta["param_groups"]},
        "rng": tensors["rng"],
        "torch_rng": tensors.get("torch_rng"),
        "state": meta["state"],
        "best": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None,
    }
