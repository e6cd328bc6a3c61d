"""A model folder's config and checksum, read without torch.

``pipeline.artifacts`` (torch) and ``pipeline.lite`` (numpy) both load model folders; what
they share, the checks on ``config.json`` and the checksum over config, vocabulary and
weights, lives here so that neither needs the other's array library."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Config, ModelConfig, validate
from .errors import ConfigError, ModelLoadError
from .vocab import Vocab

FORMAT = "tensevae-model/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
_SIZE_LIMIT = 16384  # no real tensevae model comes near; guards against absurd allocations


def digest(meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> str:
    """sha256 over config, vocabulary and weights (each weight's bytes as a C-contiguous
    little-endian array: numpy arrays, or anything with ``tobytes``): a damaged or edited
    model fails to load rather than converting with the wrong alphabet."""
    h = hashlib.sha256(json.dumps([meta.get("model"), meta.get("vocab")], sort_keys=True).encode())
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(arrays[k].tobytes())
    return h.hexdigest()


def verify(meta: Mapping[str, Any], arrays: Mapping[str, Any], what: str) -> None:
    """ModelLoadError where the metadata carries a checksum the weights do not match."""
    if "digest" in meta and digest(meta, arrays) != meta["digest"]:
        raise ModelLoadError(
            f"{what}: config, vocabulary and weights do not match their checksum "
            "(damaged or edited)"
        )


def read_config(meta: Any, what: str) -> tuple[ModelConfig, Vocab]:
    """The model config and vocabulary a model's metadata describes; anything this version
    cannot build is one ModelLoadError line."""
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
        validate(Config(model=config))  # the checks a config file gets (dropout in [0, 1), ...)
        return config, Vocab(meta["vocab"])
    except ConfigError as e:
        raise ModelLoadError(f"{what}: {e}") from None
    except ModelLoadError:
        raise
    except Exception as e:  # any other malformed value in a config read from outside
        raise ModelLoadError(
            f"{what}: config or vocabulary unreadable ({type(e).__name__})"
        ) from None


def read_folder(folder: str | Path) -> tuple[dict[str, Any], Path]:
    """A model folder's metadata (its config.json) and the path of its weights; a missing
    folder or file, or a config that is not a JSON object, is one ModelLoadError line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such model folder")
    cfg, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg, weights):
        if not f.is_file():
            raise ModelLoadError(f"{folder}: {f.name} is missing")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{cfg}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{cfg}: not a tensevae model config")
    return meta, weights


def pretrained_path() -> Path:
    """The folder of the model shipped with tensevae (made by ``configs/default.yaml``)."""
    return Path(__file__).resolve().parent / "data" / "pretrained"
