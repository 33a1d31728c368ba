"""AnchorBind's plugin contract, run from this package's own tests.

``assert_plugin_contract`` ships with AnchorBind (``anchorbind.contract``): it finds the plugin through
the installed entry point, exactly as users' code will, and runs every contract check
(registration, config round trip, picklable processor, ``example_inputs``, unit-norm deterministic
embeddings, gradients reaching the trunk, save/load, ``BindModel`` round trip, ``example_bad_inputs``
refused with an ``InputError``, native loss). The same checks run from a shell:
``anchorbind check-plugin imu_conv``.
"""

from anchorbind.contract import assert_plugin_contract


def test_imu_plugin_passes_the_anchorbind_contract():
    assert_plugin_contract("imu_conv")


def test_imu_plugin_passes_the_contract_with_another_config():
    assert_plugin_contract("imu_conv", {"num_samples": 64, "width": 16, "depth": 2})
