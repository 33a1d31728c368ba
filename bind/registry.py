"""The modality registry: one name -> plugin class table, fed by decorators and entry points.

Built-in plugins and third-party packages register the same way: an entry point in the group
``anchorbind.modalities`` whose value is the plugin class (``pkg.module:Class``). Entry points
are read lazily, the first time a name is looked up, so importing ``bind`` stays cheap.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from anchorbind.errors import UnknownModalityError
from anchorbind.plugin import ModalityPlugin, PluginConfig

__all__ = [
    "ANCHOR_MODALITY",
    "ENTRY_POINT_GROUP",
    "create_plugin",
    "get_plugin_class",
    "list_modalities",
    "register_modality",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "anchorbind.modalities"
ANCHOR_MODALITY = "image"
"""The reserved name of the frozen anchor's modality; no plugin may take it."""

_REGISTRY: dict[str, type[ModalityPlugin]] = {}
_entry_points_loaded = False
_entry_point_errors: dict[str, str] = {}

P = TypeVar("P", bound=type[ModalityPlugin])


def register_modality(cls: P) -> P:
    """Class decorator: register a :class:`ModalityPlugin` subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, ModalityPlugin)):
        raise TypeError(f"{cls!r} is not a ModalityPlugin subclass")
    name = cls.name
    if not name or not name.isidentifier():
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty identifier, got {name!r}")
    if name == ANCHOR_MODALITY:
        raise ValueError(f"'{ANCHOR_MODALITY}' is reserved for the frozen anchor")
    previous = _REGISTRY.get(name)
    if previous is not None and previous is not cls:
        warnings.warn(
            f"modality '{name}' re-registered: {previous.__module__}.{previous.__qualname__} "
            f"replaced by {cls.__module__}.{cls.__qualname__}",
            stacklevel=2,
        )
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception as err:  # a broken third-party plugin must not break the others
            _entry_point_errors[ep.name] = f"{ep.value}: {type(err).__name__}: {err}"
            log.warning("could not load modality plugin %r (%s)", ep.name, _entry_point_errors[ep.name])
            continue
        if getattr(cls, "name", None) != ep.name:
            _entry_point_errors[ep.name] = f"{ep.value}: class name attribute is {getattr(cls, 'name', None)!r}"
            log.warning("entry point %r points at a plugin named %r", ep.name, getattr(cls, "name", None))
            continue
        register_modality(cls)


def list_modalities(pattern: str = "*") -> list[str]:
    """Registered plugin names matching a shell-style ``pattern`` (the anchor is not listed)."""
    _load_entry_points()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_plugin_class(name: str) -> type[ModalityPlugin]:
    """The plugin class registered under ``name``.

    Raises:
        UnknownModalityError: listing the registered names (and any plugin that failed to load).
    """
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = ""
        if name in _entry_point_errors:
            hint = f"; its entry point failed to load: {_entry_point_errors[name]}"
        elif name == ANCHOR_MODALITY:
            hint = "; 'image' is the frozen anchor, configured under 'anchor', not a plugin"
        raise UnknownModalityError(
            f"unknown modality {name!r}; registered: {sorted(_REGISTRY)}{hint}. "
            f"Install a plugin package that declares it in the '{ENTRY_POINT_GROUP}' entry-point group, "
            "or decorate its class with @register_modality."
        ) from None


def create_plugin(
    name: str,
    config: PluginConfig | Mapping[str, Any] | None = None,
    *,
    embed_dim: int,
    **overrides: Any,
) -> ModalityPlugin:
    """Build the plugin ``name`` projecting to ``embed_dim``.

    Args:
        name: a registered modality name.
        config: the plugin's config dataclass or a dict of its fields (unknown keys refused).
        embed_dim: the anchor's embedding width.
        **overrides: config fields to replace; ``None`` values are dropped so they never
            replace a plugin default.
    """
    cls = get_plugin_class(name)
    if isinstance(config, PluginConfig):
        from anchorbind.config import config_to_dict

        config = config_to_dict(config)
    merged = dict(config or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return cls(merged, embed_dim=embed_dim)
