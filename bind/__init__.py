"""AnchorBind: bind any modality to a frozen image encoder, and measure what the anchor costs.

Public API::

    from anchorbind import BindModel, create_plugin, list_modalities, register_modality
    from anchorbind import Processor, create_processor      # reading/batching only, no model
"""

from anchorbind.errors import AnchorBindError, ConfigError, InputError, UnknownModalityError
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.processor import Processor
from anchorbind.registry import create_plugin, create_processor, get_plugin_class, list_modalities, register_modality

__all__ = [
    "AnchorBindError",
    "BindModel",
    "ConfigError",
    "FrozenAnchor",
    "ImageProcessor",
    "InputError",
    "ModalityPlugin",
    "PluginConfig",
    "Processor",
    "UnknownModalityError",
    "create_image_processor",
    "create_plugin",
    "create_processor",
    "get_plugin_class",
    "list_modalities",
    "register_modality",
]


def __getattr__(name: str):
    # BindModel, FrozenAnchor and the image processor pull in timm; import them on first use only.
    if name == "BindModel":
        from anchorbind.model import BindModel

        return BindModel
    if name == "FrozenAnchor":
        from anchorbind.anchor import FrozenAnchor

        return FrozenAnchor
    if name in ("ImageProcessor", "create_image_processor"):
        from anchorbind import image_processor

        return getattr(image_processor, name)
    raise AttributeError(f"module 'bind' has no attribute {name!r}")
