"""The modality registry: one name -> plugin class table, fed by decorators and entry points.

Built-in plugins and third-party packages register the same way: an entry point in the group
``anchorbind.modalities`` whose value is the plugin class (``pkg.module:Class``). Entry points
are read lazily, the first time a name is looked up, so importing ``bind`` stays cheap.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from anchorbind.errors import UnknownModalityError
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.processor import Processor

__all__ = [
    "ANCHOR_MODALITY",
    "ENTRY_POINT_GROUP",
    "caption_modality",
    "create_plugin",
    "create_processor",
    "get_plugin_class",
    "list_modalities",
    "plugin_class_or_none",
    "register_modality",
    "text_modalities",
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
    processor_cls = getattr(cls, "Processor", None)
    if not (isinstance(processor_cls, type) and issubclass(processor_cls, Processor)):
        raise TypeError(
            f"{cls.__qualname__}.Processor must be a subclass of anchorbind.processor.Processor (the "
            f"modality's model-free load/collate), got {processor_cls!r}"
        )
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
        try:
            register_modality(cls)
        except (TypeError, ValueError) as err:  # e.g. a plugin without a Processor: leave it out, say why
            _entry_point_errors[ep.name] = f"{ep.value}: {err}"
            log.warning("could not register modality plugin %r (%s)", ep.name, err)


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


def plugin_class_or_none(name: str) -> type[ModalityPlugin] | None:
    """The plugin class registered under ``name``, or None (the anchor, or a plugin not installed).

    For analyses of stored results, which must not fail because a plugin package is missing:
    an unknown name then simply declares nothing (see :class:`ModalityPlugin`'s class attributes).
    """
    if name == ANCHOR_MODALITY:
        return None
    try:
        return get_plugin_class(name)
    except UnknownModalityError:
        return None


def text_modalities(names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose plugin declares ``encodes_text`` (inputs are natural language).

    Order is kept; the anchor and names without an installed plugin are never text modalities.
    """
    out = []
    for name in names:
        cls = plugin_class_or_none(name)
        if cls is not None and cls.encodes_text and name not in out:
            out.append(name)
    return out


def caption_modality(names: Iterable[str]) -> str | None:
    """The caption / prompt modality among ``names``: the plugin that ``encodes_text`` (None if none does).

    With several text-encoding plugins the alphabetically first name is chosen, so the choice
    depends only on which plugins a model has, never on their order in a config.
    """
    found = sorted(text_modalities(names))
    return found[0] if found else None


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


def create_processor(
    name: str,
    config: PluginConfig | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Processor:
    """Build only the processor of modality ``name`` (reading, preprocessing, collating): no model.

    What data loader workers, shard conversion and file checks need: light, picklable, and quick
    to build, since no trunk or backbone is constructed (the text processor does not even load
    its tokenizer until it first collates).

    Args:
        name: a registered modality name, or ``"image"`` for the anchor's
            :class:`~anchorbind.image_processor.ImageProcessor` (``config`` is then an
            :class:`~anchorbind.anchor_config.AnchorConfig` or its fields).
        config: the plugin's config dataclass or a dict of its fields (unknown keys refused).
        **overrides: config fields to replace; ``None`` values are dropped (as in :func:`create_plugin`).
    """
    from anchorbind.config import config_to_dict

    if name == ANCHOR_MODALITY:
        from anchorbind.image_processor import create_image_processor

        base = config if isinstance(config, Mapping) or config is None else config_to_dict(config)
        merged = dict(base or {})
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return create_image_processor(merged)
    cls = get_plugin_class(name)
    if isinstance(config, PluginConfig):
        config = config_to_dict(config)
    merged = dict(config or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return cls.create_processor(merged)
