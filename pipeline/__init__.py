"""tensevae's machine learning: a character-level conditional VAE for English verb tenses.

Importable without Celery or a database; the job system in ``workers`` drives it."""

from .artifacts import from_bytes, load, load_pretrained, save, to_bytes
from .config import Config, ModelConfig, TrainConfig, load_config
from .errors import (
    ConfigError,
    DataError,
    ModelLoadError,
    TenseError,
    TenseVAEError,
    TrainingDiverged,
    WordError,
)
from .evaluate import convert, evaluate, generate
from .model import TenseCVAE
from .tenses import TENSES, tense_code
from .training import EpochReport, TrainResult, train

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
