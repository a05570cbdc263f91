"""Registries derived from the classes: a concrete subclass registers itself under its ``name``."""

from __future__ import annotations

from typing import Any


def register(registry: dict[str, Any], cls: type) -> None:
    """Add ``cls`` to ``registry`` under ``cls.name`` if the class itself defines a string ``name``
    (abstract intermediates and aliases do not)."""
    name = cls.__dict__.get("name")
    if isinstance(name, str):
        if name in registry and registry[name] is not cls:
            raise ValueError(f"two classes claim the name {name!r}: {registry[name].__name__} and {cls.__name__}")
        registry[name] = cls
