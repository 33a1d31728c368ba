"""The depth modality: metric depth maps bound to the image anchor as normalised disparity.

Registered as ``depth`` through the ``anchorbind.modalities`` entry point in ``pyproject.toml``.
"""

from anchorbind.modalities.depth.config import DepthConfig
from anchorbind.modalities.depth.plugin import DepthPlugin
from anchorbind.modalities.depth.processor import DepthInputStats, DepthProcessor
from anchorbind.modalities.depth.reading import DepthReading, read_depth

__all__ = ["DepthConfig", "DepthInputStats", "DepthPlugin", "DepthProcessor", "DepthReading", "read_depth"]
