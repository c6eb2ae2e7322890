"""One small registry for everything built by name: robust rules, attacks, optimizer rules.

A ``Registry`` is a ``dict`` (name -> entry) that knows what it holds (``kind``), refuses a name twice,
and says the known names when asked for an unknown one. ``check_params`` is the one place where a
parameter dict from a config (``defense.params``, ``attack.params``) meets what an entry takes: an
unknown key is one line naming it and the keys that exist. Layer 1: imports nothing from fedrec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Entries by name. ``register`` is a decorator (the name from the entry's ``name`` attribute, or
    given); ``lookup`` raises ``ValueError`` naming the known entries."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, entry: T | None = None, *, name: str | None = None) -> Any:
        def add(obj: T) -> T:
            key = name if name is not None else getattr(obj, "name", "")
            if not key or key in self:
                raise ValueError(f"{self.kind} name {key!r} is empty or registered twice")
            self[key] = obj
            return obj

        return add if entry is None else add(entry)

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}") from None


def check_params(what: str, params: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ``ValueError`` when ``params`` holds a key that ``what`` does not take."""
    known = list(known)
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no parameters"
        raise ValueError(f"{what} has no parameter {', '.join(unknown)}; it takes {takes}")


def keyword_params(fn: Callable[..., Any], skip: int) -> dict[str, Any]:
    """The keyword parameters of ``fn`` after its first ``skip`` positional ones, with their defaults
    (``inspect.Parameter.empty`` where there is none)."""
    import inspect

    sig = inspect.signature(fn)
    names = list(sig.parameters.values())[skip:]
    return {p.name: p.default for p in names if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
