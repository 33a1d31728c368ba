"""The plugin contract, checked for every registered modality (built in or installed), timm-style.

A plugin is collected from ``list_modalities()``, so a third-party package that declares an
``anchorbind.modalities`` entry point is tested as soon as it is installed. The one thing the
suite cannot invent is a valid raw input, so it keeps example-input factories for the
modalities it knows; a plugin without one is skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import ConfigError
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.registry import create_plugin, get_plugin_class, list_modalities

EMBED_DIM = 24
BATCH = 3


def _text_inputs(tmp: Path) -> list[Any]:
    return ["a red cube on a table", "a dog barking in the rain", "quiet piano music"]


def _audio_inputs(tmp: Path) -> list[Any]:
    import soundfile as sf

    rate = 16000
    time = np.arange(rate) / rate
    paths = []
    for i, freq in enumerate((220.0, 440.0, 880.0)):
        paths.append(tmp / f"tone{i}.wav")
        sf.write(paths[-1], (0.3 * np.sin(2 * np.pi * freq * time)).astype(np.float32), rate)
    return paths


def _depth_inputs(tmp: Path) -> list[Any]:
    rows = np.arange(48, dtype=np.float32)[:, None] / 48
    cols = np.arange(64, dtype=np.float32)[None, :] / 64
    paths = []
    for i in range(BATCH):
        paths.append(tmp / f"depth{i}.npy")
        np.save(paths[-1], (1.0 + (i + 1) * rows + cols).astype(np.float32))
    return paths


def _imu_inputs(tmp: Path) -> list[Any]:
    rng = np.random.default_rng(0)
    paths = []
    for i, steps in enumerate((300, 200, 50)):
        paths.append(tmp / f"imu{i}.npy")
        np.save(paths[-1], rng.normal(size=(steps, 6)).astype(np.float32))
    return paths


EXAMPLE_INPUTS: dict[str, Callable[[Path], list[Any]]] = {
    "text": _text_inputs,
    "audio": _audio_inputs,
    "depth": _depth_inputs,
    "imu": _imu_inputs,
}
"""Raw inputs each known modality must accept: ``factory(tmp_dir) -> BATCH sources``."""

MODALITIES = list_modalities()


@pytest.fixture(scope="module", params=MODALITIES)
def plugin(request: pytest.FixtureRequest) -> ModalityPlugin:
    """Each registered plugin with its default config, built once per module."""
    return create_plugin(request.param, embed_dim=EMBED_DIM)


@pytest.fixture
def batch(plugin: ModalityPlugin, tmp_path: Path) -> Any:
    factory = EXAMPLE_INPUTS.get(plugin.name)
    if factory is None:
        pytest.skip(f"no example-input factory for modality {plugin.name!r} in {__name__}.EXAMPLE_INPUTS")
    return plugin.load_batch(factory(tmp_path))


def _symmetric_infonce(plugin: ModalityPlugin, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = plugin.logit_scale() * embeddings @ targets.T
    labels = torch.arange(len(embeddings))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("name", MODALITIES)
def test_registration_is_consistent(name: str) -> None:
    cls = get_plugin_class(name)
    assert issubclass(cls, ModalityPlugin) and cls.name == name
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, PluginConfig)
    assert cls.sample_keys and all(isinstance(k, str) and k for k in cls.sample_keys)


@pytest.mark.parametrize("name", MODALITIES)
def test_config_round_trips_and_refuses_unknown_keys(name: str) -> None:
    config_cls = get_plugin_class(name).Config
    default = config_cls()
    plain = config_to_dict(default)
    json.dumps(plain)  # a config must be storable in config.json
    assert from_dict(config_cls, plain) == default
    with pytest.raises(ConfigError, match="not_a_config_key"):
        create_plugin(name, {"not_a_config_key": 1}, embed_dim=EMBED_DIM)


def test_built_plugin_reports_its_config(plugin: ModalityPlugin) -> None:
    assert from_dict(type(plugin).Config, plugin.config_dict()) == plugin.config
    assert plugin.embed_dim == EMBED_DIM and plugin.trunk_dim > 0
    assert isinstance(plugin.input_description(), str) and plugin.input_description()


def test_forward_gives_unit_norm_embeddings(plugin: ModalityPlugin, batch: Any) -> None:
    assert plugin.batch_size(batch) == BATCH
    plugin.eval()
    with torch.no_grad():
        embeddings = plugin(batch)
    assert embeddings.shape == (BATCH, EMBED_DIM)
    assert torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(BATCH), atol=1e-5, rtol=0)


def test_every_trainable_parameter_gets_a_gradient(plugin: ModalityPlugin, batch: Any) -> None:
    plugin.train()
    plugin.zero_grad(set_to_none=True)
    targets = F.normalize(torch.randn(BATCH, EMBED_DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
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
