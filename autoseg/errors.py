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
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "" if blocker == path else f" ({blocker}, one of its folders, is a file)"
        raise UserFacingError(f"the {what} {path} is a file{where}; expected a folder (existing or to be "
                              "created): give a folder path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_file(path, what: str = "output file"):
    """``path`` checked as a file to write later: ``UserFacingError`` when a folder is in its place
    or a file in the place of one of its folders. Nothing is written or created."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise UserFacingError(f"the {what} {path} is a folder; expected a file path (existing or to be created): "
                              "give the name of a file, not of a folder")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserFacingError(f"the {what} {path} cannot be written: {blocker}, one of its folders, is a file; "
                              "give a path inside a folder")
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
