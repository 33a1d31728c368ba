"""Example AnchorBind plugin package: 6-axis IMU recordings bound to the frozen image anchor.

It is registered by the entry point ``imu_conv = "anchorbind_imu:ImuPlugin"`` in the group
``anchorbind.modalities`` (see ``pyproject.toml``); importing this package registers nothing. The
modality is named ``imu_conv``, not ``imu`` (AnchorBind's built-in IMU plugin), so both can be installed together.
"""

from anchorbind_imu.plugin import ImuConfig, ImuPlugin, ImuProcessor

__all__ = ["ImuConfig", "ImuPlugin", "ImuProcessor"]
