"""Errors that are the user's to fix: the CLI prints them as messages, not tracebacks."""
from __future__ import annotations


class UserFacingError(Exception):
    """A problem the user must fix; the message says what was expected, found, and how to fix it."""


def user_errors() -> tuple[type[BaseException], ...]:
    from autoseg.dataset import DatasetError
    from autoseg.imageio import ImageReadError
    from autoseg.paths import DatasetNotFoundError
    from autoseg.serialization import SchemaError

    return (UserFacingError, DatasetError, ImageReadError, DatasetNotFoundError, SchemaError, FileNotFoundError)
