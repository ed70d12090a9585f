"""Errors that are the user's to fix: the CLI prints them as messages, not tracebacks."""
from __future__ import annotations


class UserFacingError(Exception):
    """A problem the user must fix; the message says what was expected, found, and how to fix it."""


class UnknownNameError(UserFacingError, KeyError):
    """A name given by the user (a configuration, a device profile, a loss) that is not known; still
    a KeyError for callers that catch those."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def output_folder(path, what: str = "output folder"):
    """``path`` as a folder to write into, created if missing; ``UserFacingError`` when a file is
    in the way (nothing is written)."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserFacingError(f"the {what} {path} is a file; expected a folder (existing or to be created): "
                              "give a folder path")
    path.mkdir(parents=True, exist_ok=True)
    return path


class MissingFileError(UserFacingError, FileNotFoundError):
    """A file the user was to make (a trained checkpoint, plans) is not there; still a
    FileNotFoundError for callers that catch those. Any other FileNotFoundError is a bug and keeps
    its traceback."""


class SchemaError(ValueError):
    """A JSON file does not match the dataclass it should describe (raised by ``autoseg.serialization``)."""


def user_errors() -> tuple[type[BaseException], ...]:
    from autoseg.dataset import DatasetError
    from autoseg.imageio import ImageReadError
    from autoseg.paths import DatasetNotFoundError

    return (UserFacingError, DatasetError, ImageReadError, DatasetNotFoundError, SchemaError)
