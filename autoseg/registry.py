"""Explicit registries for pluggable parts (losses, networks, normalisation schemes, ...).

An unknown name fails with a suggestion: ``unknown loss 'dic'; did you mean 'dice'?
available: ce, dice, dice_ce``.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from autoseg.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} '{name}'{hint} available: {', '.join(sorted(self._items))}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
