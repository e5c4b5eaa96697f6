"""A name -> object registry with close-match suggestions, as timm's ``register_model``."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes or builder functions).

    ``kind`` is the plural noun used by ``tllib-jtln list KIND`` and in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``. A name may be registered once."""

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind}: '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        """The object registered as ``name``; a :class:`UserError` suggesting close names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(self.unknown_message(name)) from None

    def canonical(self, name: str) -> str:
        """The registered name matching ``name`` up to case, ``-`` and ``_`` (``JTLN`` -> ``jtln``,
        ``fashion-mnist`` -> ``FashionMNIST``); a :class:`UserError` suggesting close names otherwise."""
        if name in self._entries:
            return name
        key = _loose(name)
        for registered in self._entries:
            if _loose(registered) == key:
                return registered
        raise UserError(self.unknown_message(name))

    def unknown_message(self, name: str, extra: list[str] | None = None) -> str:
        choices = self.names() + list(extra or [])
        close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} '{name}'{hint} "
                f"(see `tllib-jtln list {self.kind}`)")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _loose(name: object) -> str:
    """A name with case, ``-`` and ``_`` ignored."""
    return str(name).replace("-", "").replace("_", "").lower()
