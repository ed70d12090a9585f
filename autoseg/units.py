"""Units every stage may use: durations written by a user (``30m``, ``1h30m``, ``90s``).

A core module: it imports nothing from the stage packages, so planners, training and the
benchmarks read a ``--time-budget`` the same way.
"""
from __future__ import annotations

import re

from autoseg.errors import UserFacingError

_SECONDS_PER_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str, option: str = "--time-budget") -> float:
    """A duration in seconds from its written form; ``option`` names the flag in error messages.

    ``"30m"`` -> 1800.0, ``"1h30m"`` -> 5400.0, ``"90s"`` and ``"90"`` -> 90.0, ``"1.5h"`` -> 5400.0.
    Raises ``UserFacingError`` for anything else, or for a duration that is not positive.
    """
    written = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", written):
        seconds = float(written)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)", written)
        if not parts or "".join(number + unit for number, unit in parts) != written:
            raise UserFacingError(f"{option}: expected a duration such as 30m, 1h30m, 90s or 2.5h, "
                                  f"found '{text}'")
        seconds = sum(float(number) * _SECONDS_PER_UNIT[unit] for number, unit in parts)
    if seconds <= 0:
        raise UserFacingError(f"{option} must be positive, found '{text}'")
    return seconds
