"""Errors a user can cause. Each carries one line that names what is wrong."""


class TenseVAEError(ValueError):
    """Base of every error caused by input rather than by a bug (the CLI exits 2 on it)."""


class DataError(TenseVAEError):
    """A dataset file is malformed: the message is ``FILE:LINE: what is wrong``."""


class WordError(TenseVAEError):
    """A word the model cannot read or write."""


class TenseError(TenseVAEError):
    """A tense name that is not one of the four."""


class ConfigError(TenseVAEError):
    """A configuration key or value that is not accepted."""


class ModelLoadError(TenseVAEError):
    """A saved model that is missing, damaged or from an incompatible version."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
