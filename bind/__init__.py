"""AnchorBind: bind any modality to a frozen image encoder, and measure what the anchor costs.

Public API::

    from anchorbind import BindModel, create_plugin, list_modalities, register_modality
"""

from anchorbind.errors import AnchorBindError, ConfigError, InputError, UnknownModalityError
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.registry import create_plugin, get_plugin_class, list_modalities, register_modality

__all__ = [
    "AnchorBindError",
    "BindModel",
    "ConfigError",
    "FrozenAnchor",
    "InputError",
    "ModalityPlugin",
    "PluginConfig",
    "UnknownModalityError",
    "create_plugin",
    "get_plugin_class",
    "list_modalities",
    "register_modality",
]


def __getattr__(name: str):
    # BindModel and FrozenAnchor pull in timm; import them on first use only.
    if name == "BindModel":
        from anchorbind.model import BindModel

        return BindModel
    if name == "FrozenAnchor":
        from anchorbind.anchor import FrozenAnchor

        return FrozenAnchor
    raise AttributeError(f"module 'bind' has no attribute {name!r}")
