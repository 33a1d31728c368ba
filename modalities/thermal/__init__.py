"""The thermal modality: single-channel infrared images bound to the image anchor.

Registered as ``thermal`` through the ``anchorbind.modalities`` entry point in ``pyproject.toml``.
ImageBind's thermal branch (LLVIP) imports onto this plugin (``anchorbind import-imagebind``).
"""

from anchorbind.modalities.thermal.config import ThermalConfig
from anchorbind.modalities.thermal.plugin import ThermalPlugin
from anchorbind.modalities.thermal.processor import ThermalProcessor, read_thermal

__all__ = ["ThermalConfig", "ThermalPlugin", "ThermalProcessor", "read_thermal"]
