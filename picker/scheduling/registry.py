"""The plugin registry: plugin type name → factory, open to other packages.

picker's own plugins are registered by ``builtin_registry``. Any installed package adds
more through the Python entry-point group ``picker.plugins``: each entry point's name is
the plugin type, its object a factory ``(name, params, handle) -> Plugin`` (usually the
plugin class). For example, in the other package's ``pyproject.toml``::

    [project.entry-points."picker.plugins"]
    slo_headroom = "my_package.scorers:SloHeadroomScorer"

after which ``slo_headroom`` can be used in picker's config like a built-in scorer.
A package may not replace a built-in type (the registry raises on a duplicate name).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from picker.scheduling.framework import Handle, Params, Plugin, PluginFactory

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "picker.plugins"


class Registry:
    def __init__(self) -> None:
        self._factories: dict[str, PluginFactory] = {}
        self._origin: dict[str, str] = {}

    def register(self, type_name: str, factory: PluginFactory, origin: str = "picker") -> None:
        if not type_name or not isinstance(type_name, str):
            raise ValueError("a plugin type name must be a non-empty string")
        if type_name in self._factories:
            raise ValueError(
                f"plugin type {type_name!r} from {origin} is already registered "
                f"(by {self._origin[type_name]})"
            )
        self._factories[type_name] = factory
        self._origin[type_name] = origin

    def types(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._factories

    def create(
        self,
        type_name: str,
        name: str,
        parameters: Mapping[str, Any] | None,
        handle: Handle,
    ) -> Plugin:
        """A new plugin instance; unknown types and unread parameters are errors."""
        factory = self._factories.get(type_name)
        if factory is None:
            raise ValueError(f"unknown plugin type {type_name!r}; known: {self.types()}")
        params = Params(parameters, plugin=name)
        plugin = factory(name, params, handle)
        if not isinstance(plugin, Plugin):
            raise TypeError(
                f"plugin type {type_name!r} ({self._origin[type_name]}) built "
                f"{type(plugin).__name__}, not a picker.scheduling.framework.Plugin"
            )
        params.finish()
        return plugin

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Registers the factories other installed packages declare; returns their types."""
        added: list[str] = []
        for ep in entry_points(group=group):
            origin = f"{ep.value} ({ep.dist.name if ep.dist else 'unknown package'})"
            try:
                factory = ep.load()
            except Exception as e:
                raise ValueError(f"plugin {ep.name!r} from {origin} failed to load: {e}") from e
            self.register(ep.name, factory, origin)
            added.append(ep.name)
        if added:
            log.info("plugins from installed packages: %s", ", ".join(added))
        return added


def builtin_registry() -> Registry:
    """A registry holding picker's own plugins (see ``picker.scheduling.plugins``)."""
    from picker.scheduling.plugins import BUILTIN

    reg = Registry()
    for type_name, factory in BUILTIN.items():
        reg.register(type_name, factory)
    return reg


def default_registry() -> Registry:
    """picker's own plugins plus those of installed packages."""
    reg = builtin_registry()
    reg.load_entry_points()
    return reg
