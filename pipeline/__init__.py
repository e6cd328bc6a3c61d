"""tensevae's machine learning: a character-level conditional VAE for English verb tenses.

Importable without Celery or a database; the job system in ``workers`` drives it."""

import sys
from importlib import import_module
from types import ModuleType

# Names are imported on first use (PEP 562), so that ``pipeline.lite`` and the other
# torch-free modules load without torch: a one-off conversion needs none of it.
_HOMES = {
    "from_bytes": "artifacts",
    "load": "artifacts",
    "load_pretrained": "artifacts",
    "save": "artifacts",
    "to_bytes": "artifacts",
    "Config": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "ConfigError": "errors",
    "DataError": "errors",
    "ModelLoadError": "errors",
    "TenseError": "errors",
    "TenseVAEError": "errors",
    "TrainingDiverged": "errors",
    "WordError": "errors",
    "convert": "evaluate",
    "evaluate": "evaluate",
    "generate": "evaluate",
    "TenseCVAE": "model",
    "TENSES": "tenses",
    "tense_code": "tenses",
    "EpochReport": "training",
    "TrainResult": "training",
    "train": "training",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


class _Package(ModuleType):
    """``pipeline.evaluate`` is the function ``evaluate``, as it was when this package
    imported its names eagerly; importing the submodule of that name (which sets it on its
    package) must not put the module in its place. The module stays in sys.modules."""

    def __setattr__(self, name: str, value) -> None:
        if name in _HOMES and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "TENSES",
    "Config",
    "ConfigError",
    "DataError",
    "EpochReport",
    "ModelConfig",
    "ModelLoadError",
    "TenseCVAE",
    "TenseError",
    "TenseVAEError",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "WordError",
    "convert",
    "evaluate",
    "from_bytes",
    "generate",
    "load",
    "load_config",
    "load_pretrained",
    "save",
    "tense_code",
    "to_bytes",
    "train",
]
