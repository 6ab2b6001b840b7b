"""Errors the user can act on. Each message says what was wrong and what to do."""


class QrrError(Exception):
    """Base class of every error qrr raises on purpose."""


class ArtifactError(QrrError):
    """The artifact folder is missing, incomplete, corrupted or from a newer qrr."""


class InputError(QrrError, ValueError):
    """A query, document or option given to the runtime is not usable."""


class DeviceError(QrrError):
    """The requested device has no execution provider in this installation."""


class LoadCacheWarning(UserWarning):
    """The load cache (runtime/cache.py) could not be read or written: the artifact was loaded without it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
