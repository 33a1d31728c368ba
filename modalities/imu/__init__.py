"""The IMU modality: multichannel inertial time series (accelerometer + gyroscope) bound to the image anchor.

Registered as ``imu`` through the ``anchorbind.modalities`` entry point in ``pyproject.toml``.
ImageBind's IMU branch (Ego4D, 6 x 2000 samples) imports onto this plugin (``anchorbind import-imagebind``).
"""

from anchorbind.modalities.imu.config import ImuConfig
from anchorbind.modalities.imu.plugin import ImuPlugin
from anchorbind.modalities.imu.processor import ImuProcessor, read_series

__all__ = ["ImuConfig", "ImuPlugin", "ImuProcessor", "read_series"]
