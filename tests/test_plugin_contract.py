"""The plugin contract, checked for every registered modality (built in or installed), timm-style.

A plugin is collected from ``list_modalities()``, so a third-party package that declares an
``anchorbind.modalities`` entry point is tested as soon as it is installed. The contract itself
lives in the package, :mod:`anchorbind.contract` (``anchorbind check-plugin NAME``), so plugin
authors run the same checks from their own tests; this module runs it for every registered
plugin and adds the checks the kit does not make (every trainable parameter, trunk included,
gets a gradient; the logit scale's bounds; the built plugin reports its config). Valid raw
inputs come from each plugin's own ``example_inputs()``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anchorbind.config import from_dict
from anchorbind.contract import assert_plugin_contract
from anchorbind.plugin import ModalityPlugin
from anchorbind.registry import create_plugin, list_modalities

EMBED_DIM = 24

MODALITIES = list_modalities()


@pytest.fixture(scope="module", params=MODALITIES)
def plugin(request: pytest.FixtureRequest) -> ModalityPlugin:
    """Each registered plugin with its default config, built once per module."""
    return create_plugin(request.param, embed_dim=EMBED_DIM)


@pytest.fixture
def batch(plugin: ModalityPlugin) -> Any:
    """A batch of the plugin's own ``example_inputs()`` (the kit fails a plugin with fewer than two)."""
    inputs = type(plugin).example_inputs()
    if len(inputs) < 2:
        pytest.skip(f"{type(plugin).__qualname__}.example_inputs() gives {len(inputs)} input(s) "
                    "(test_contract_kit_passes fails it)")
    return plugin.load_batch(inputs)


def _symmetric_infonce(plugin: ModalityPlugin, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = plugin.logit_scale() * embeddings @ targets.T
    labels = torch.arange(len(embeddings))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("name", MODALITIES)
def test_contract_kit_passes(name: str) -> None:
    """Registration, config round trip, processor, example inputs, embeddings, gradients reaching the trunk,
    save/load, BindModel round trip, bad inputs, native loss: ``anchorbind.contract``'s checks."""
    assert_plugin_contract(name, embed_dim=EMBED_DIM)


def test_built_plugin_reports_its_config(plugin: ModalityPlugin) -> None:
    assert from_dict(type(plugin).Config, plugin.config_dict()) == plugin.config
    assert plugin.embed_dim == EMBED_DIM and plugin.trunk_dim > 0
    assert isinstance(plugin.input_description(), str) and plugin.input_description()


def test_every_trainable_parameter_gets_a_gradient(plugin: ModalityPlugin, batch: Any) -> None:
    """Stricter than the kit (which asks for some trunk gradient): no trainable tensor is dead weight."""
    plugin.train()
    plugin.zero_grad(set_to_none=True)
    size = plugin.batch_size(batch)
    targets = F.normalize(torch.randn(size, EMBED_DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = _symmetric_infonce(plugin, plugin(batch), targets)
    loss.backward()
    trainable = {n: p for n, p in plugin.named_parameters() if p.requires_grad}
    assert trainable, "a plugin must have something to train"
    missing = sorted(n for n, p in trainable.items() if p.grad is None)
    assert not missing, f"no gradient reaches {missing}"
    broken = sorted(n for n, p in trainable.items() if not torch.isfinite(p.grad).all())
    assert not broken, f"non-finite gradients in {broken}"
    plugin.zero_grad(set_to_none=True)


def test_logit_scale_is_positive_and_bounded(plugin: ModalityPlugin) -> None:
    scale = plugin.logit_scale()
    assert scale.ndim == 0 and 0 < scale.item() <= plugin.logit_scale.max_scale
    is_parameter = any(p is plugin.logit_scale.log_scale for p in plugin.parameters())
    assert is_parameter == plugin.config.logit_scale_learnable
