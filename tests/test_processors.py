"""Processors apart from encoders: built from a config alone, no model, small pickles, same tensors.

Every check that "no model is built" counts parameter registrations (any ``nn.Module`` with
weights registers them) and refuses ``timm.create_model``, so it cannot pass by accident.
"""

from __future__ import annotations

import io
import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import timm
import torch
import webdataset as wds
from PIL import Image
from torch import nn

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.data.loader import build_loader
from anchorbind.errors import ConfigError, UnknownModalityError
from anchorbind.image_processor import ImageProcessor, create_image_processor
from anchorbind.model import BindModel
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.processor import Processor
from anchorbind.registry import create_plugin, create_processor, list_modalities, register_modality

EMBED = 16
TINY = {
    "text": {"max_length": 16},
    "audio": {"width": 16, "depth": 1, "num_heads": 1, "clips_per_sample": 2, "train_clips_per_sample": 2},
    "depth": {"width": 16, "depth": 1, "num_heads": 1, "image_size": 32},
}
"""Small trunks for the plugins compared against; the processors only read the preprocessing fields."""
BUILT_IN = ["text", "audio", "depth"]


# ---------------------------------------------------------------------- helpers
def _wav(freq: float, seconds: float = 2.5, rate: int = 16000) -> bytes:
    time = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * freq * time)).astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _depth_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(500, 6000, (30, 36)).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def inputs(name: str) -> list[Any]:
    """Raw inputs of each kind a modality accepts: arrays, file bytes, strings."""
    if name == "text":
        return ["a red cube on a table", "  a dog barking in the rain \n", b"quiet piano music"]
    if name == "audio":
        rate = 16000
        time = np.arange(int(2.0 * rate)) / rate
        return [(0.3 * np.sin(2 * np.pi * 220.0 * time)).astype(np.float32), _wav(440.0), _wav(880.0, 1.2)]
    if name == "depth":
        rows = np.arange(48, dtype=np.float32)[:, None] / 48
        cols = np.arange(64, dtype=np.float32)[None, :] / 64
        npy = io.BytesIO()
        np.save(npy, (2.0 + cols + 0.0 * rows).astype(np.float32))
        return [(1.0 + 3.0 * rows + cols).astype(np.float32), npy.getvalue(), _depth_png(0)]
    if name == "image":
        rng = np.random.default_rng(1)
        return [rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), _png(2), _png(3, (90, 60))]
    raise KeyError(name)


def assert_same_batch(actual: Any, expected: Any) -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(actual[key], value), key
    else:
        assert isinstance(actual, torch.Tensor) and torch.equal(actual, expected)


def seed(value: int) -> None:
    """Seed the RNGs augmentation draws from (timm's random crops use Python's ``random``)."""
    random.seed(value)
    torch.manual_seed(value)


class ModelBuilt(AssertionError):
    pass


@contextmanager
def no_model_is_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail if any parameter or buffer is registered (every model does) or timm builds a model."""
    registered: list[str] = []
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def counting_parameter(self: nn.Module, name: str, param: Any) -> None:
        registered.append(f"{type(self).__name__}.{name}")
        register_parameter(self, name, param)

    def counting_buffer(self: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        registered.append(f"{type(self).__name__}.{name}")
        register_buffer(self, name, tensor, persistent)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ModelBuilt(f"timm.create_model{args} called while building a processor")

    with monkeypatch.context() as patch:
        patch.setattr(nn.Module, "register_parameter", counting_parameter)
        patch.setattr(nn.Module, "register_buffer", counting_buffer)
        patch.setattr(timm, "create_model", refuse)
        patch.setattr(timm.models, "create_model", refuse)
        yield registered
    assert not registered, f"a model was built: {registered[:5]}"


class ModuleSpy(pickle.Pickler):
    """A pickler that refuses any ``nn.Module``: what a spawned worker would receive is checked."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, nn.Module):
            raise ModelBuilt(f"an nn.Module ({type(obj).__name__}) would be pickled")
        return NotImplemented


def pickled_without_modules(obj: Any) -> bytes:
    buffer = io.BytesIO()
    ModuleSpy(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def shallow_modules(processor: Processor) -> list[str]:
    """Attributes of ``processor`` (and the items of its containers) that are ``nn.Module`` s."""
    found = []
    for key, value in vars(processor).items():
        items = list(value.values()) if isinstance(value, dict) else list(value) if isinstance(
            value, (list, tuple)) else [value]
        found += [key for item in items if isinstance(item, nn.Module)]
    return found


def make_processor(name: str) -> Processor:
    return create_image_processor({"image_size": 64}) if name == "image" else create_processor(name, TINY[name])


# ---------------------------------------------------------------------- built from a config alone
@pytest.mark.parametrize("name", ["image", *BUILT_IN])
def test_processor_is_built_and_used_without_any_model(name, monkeypatch):
    with no_model_is_built(monkeypatch):
        processor = make_processor(name)
        batch = processor.load_batch(inputs(name))
        train_batch = processor.load_batch(inputs(name), train=True)
    assert isinstance(processor, Processor) and not isinstance(processor, nn.Module)
    assert not shallow_modules(processor), shallow_modules(processor)
    assert processor.modality == name and processor.sample_keys
    assert processor.batch_size(batch) == processor.batch_size(train_batch) == 3
    assert isinstance(processor.input_description(), str) and processor.input_description()


@pytest.mark.parametrize("name", ["image", *BUILT_IN])
def test_processor_pickles_small_and_round_trips_to_identical_batches(name):
    processor = make_processor(name)
    expected = processor.load_batch(inputs(name))  # after first use: tokenizer / transforms built
    data = pickled_without_modules(processor)
    assert len(data) < 64 * 1024, f"{name} processor pickles to {len(data)} bytes"
    clone = pickle.loads(data)
    assert type(clone) is type(processor) and clone.config == processor.config
    assert_same_batch(clone.load_batch(inputs(name)), expected)
    seed(7)
    augmented = processor.load_batch(inputs(name), train=True)
    seed(7)
    assert_same_batch(clone.load_batch(inputs(name), train=True), augmented)


def test_text_tokenizer_is_lazy_and_left_out_of_the_pickle():
    processor = create_processor("text")
    assert processor._tokenizer is None, "the tokenizer loads on first use, not when the processor is built"
    processor.collate(["hello"])
    assert processor._tokenizer is not None
    clone = pickle.loads(pickle.dumps(processor))
    assert clone._tokenizer is None
    assert len(pickle.dumps(processor)) < 4096


@pytest.mark.parametrize("name", BUILT_IN)
def test_processor_equals_the_plugins_own_preprocessing(name):
    plugin = create_plugin(name, TINY[name], embed_dim=EMBED)
    processor = create_processor(name, TINY[name])
    assert type(plugin.processor) is type(processor) is type(plugin).Processor
    assert plugin.processor.config == processor.config == plugin.config
    assert processor.sample_keys == type(plugin).sample_keys and processor.modality == plugin.name
    assert_same_batch(processor.load_batch(inputs(name)), plugin.load_batch(inputs(name)))
    seed(3)
    expected = plugin.load_batch(inputs(name), train=True)
    seed(3)
    assert_same_batch(processor.load_batch(inputs(name), train=True), expected)
    assert plugin.input_description() == processor.input_description()
    batch = processor.load_batch(inputs(name))
    plugin.eval()
    with torch.no_grad():
        assert plugin(batch).shape == (3, EMBED)  # a processor's batch is what the plugin encodes


def test_config_is_validated_like_the_plugins():
    with pytest.raises(ConfigError, match="not_a_key"):
        create_processor("depth", {"not_a_key": 1})
    with pytest.raises(ConfigError, match="max_length must be at least 2"):
        create_processor("text", {"max_length": 1})
    with pytest.raises(ConfigError, match="wieghts"):
        create_processor("image", {"wieghts": "none"})
    with pytest.raises(UnknownModalityError):
        create_processor("smell")
    assert isinstance(create_processor("image", AnchorConfig(image_size=48)), ImageProcessor)
    assert create_processor("depth", image_size=48).config.image_size == 48


def test_a_plugin_without_a_processor_is_refused():
    @__import__("dataclasses").dataclass
    class NoseConfig(PluginConfig):
        pass

    class NosePlugin(ModalityPlugin):
        name = "nose_without_processor"
        Config = NoseConfig
        sample_keys = ("nose.npy",)

        def build_trunk(self):
            return nn.Identity(), 4

        def forward_features(self, batch):
            return batch

    with pytest.raises(TypeError, match="Processor"):
        register_modality(NosePlugin)
    with pytest.raises(TypeError, match="Processor"):
        NosePlugin.create_processor()
    assert "nose_without_processor" not in list_modalities()


# ---------------------------------------------------------------------- the anchor's processor
@pytest.mark.parametrize("config", [
    {},
    {"weights": "none", "image_size": 160},
    {"model": "resnet10t", "weights": "none"},
    {"model": "vit_tiny_patch16_224", "weights": "none", "image_size": 96},
], ids=["lite0-packaged", "lite0-160", "resnet10t", "vit-96"])
def test_image_processor_gives_exactly_the_anchors_tensors(config, monkeypatch):
    anchor = FrozenAnchor(config)
    with no_model_is_built(monkeypatch):
        processor = create_image_processor(config)
    assert processor.data_config == anchor.data_config == timm.data.resolve_data_config(
        args={"input_size": (3, config["image_size"], config["image_size"])} if "image_size" in config else {},
        model=anchor.model)
    images = inputs("image")
    assert_same_batch(processor.load_batch(images), anchor.load_batch(images))
    assert_same_batch(processor.load_batch(images), anchor.processor.load_batch(images))
    seed(11)
    augmented = anchor.load_batch(images, train=True)
    seed(11)
    assert_same_batch(processor.load_batch(images, train=True), augmented)
    assert processor.input_description() == anchor.input_description()
    assert processor.sample_keys == FrozenAnchor.sample_keys


# ---------------------------------------------------------------------- readers get processors
def test_load_processors_of_the_shard_converter_builds_no_model(monkeypatch):
    from anchorbind.pipelines.shards.convert import load_processors

    with no_model_is_built(monkeypatch):
        processors = load_processors()
        for name, processor in processors.items():
            if name in ("image", *BUILT_IN):
                processor.load(inputs(name)[1])  # what validation does: decode file bytes
    assert sorted(processors) == sorted(["image", *list_modalities()])
    assert all(isinstance(p, Processor) for p in processors.values())
    assert len(pickled_without_modules(processors)) < 64 * 1024  # what spawned validation workers get


def test_bind_model_processor_and_encoder():
    model = BindModel.from_config({"anchor": {"weights": "none", "image_size": 32},
                                   "modalities": {"depth": TINY["depth"]}}).eval()
    assert model.processor("image") is model.anchor.processor and isinstance(model.processor("image"), ImageProcessor)
    assert model.processor("depth") is model.plugin("depth").processor
    assert model.encoder("image") is model.anchor and model.encoder("depth") is model.plugin("depth")
    with pytest.raises(UnknownModalityError):
        model.processor("audio")
    batch = model.processor("depth").load_batch(inputs("depth"))
    with torch.no_grad():
        assert torch.equal(model.encode("depth", batch), model.embed({"depth": inputs("depth")})["depth"])


def _write_shard(path: Path, count: int) -> None:
    with wds.TarWriter(str(path)) as writer:
        for i in range(count):
            writer.write({"__key__": f"s{i:04d}", "png": _png(i), "depth.png": _depth_png(i),
                          "wav": _wav(200.0 + 50 * i, 1.2), "txt": f"sample number {i}".encode()})


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_loader_workers_get_processors_only_and_decode_the_same(tmp_path, train):
    _write_shard(tmp_path / "s-000000.tar", 6)
    processors = {"image": create_image_processor({"image_size": 32}),
                  **{name: create_processor(name, TINY[name]) for name in BUILT_IN}}
    common = {"train": train, "batch_size": 3, "seed": 5, "shuffle_buffer": 4} if train else {
        "train": False, "batch_size": 3}
    loader = build_loader(str(tmp_path / "s-000000.tar"), processors, num_workers=1, **common)
    pickled_without_modules(loader.dataset)  # what a spawned worker would receive: no model inside
    in_worker = [b for _, b in zip(range(2), loader, strict=False)]
    in_process = [b for _, b in zip(range(2), build_loader(str(tmp_path / "s-000000.tar"), processors,
                                                            num_workers=0, **common), strict=False)]
    assert len(in_worker) == 2 and not any(b["errors"] for b in in_worker)
    for got, want in zip(in_worker, in_process, strict=True):
        assert got["__key__"] == want["__key__"]
        for name in processors:
            assert got["mask"][name].all()
            if not train:  # augmentation draws from each process's own RNG stream
                assert_same_batch(got[name], want[name])
            else:
                assert processors[name].batch_size(got[name]) == 3


def test_loader_given_an_encoder_uses_its_processor(tmp_path):
    _write_shard(tmp_path / "s-000000.tar", 3)
    plugin = create_plugin("depth", TINY["depth"], embed_dim=EMBED)
    loader = build_loader(str(tmp_path / "s-000000.tar"), {"depth": plugin}, train=False, batch_size=3,
                          num_workers=0)
    pickled_without_modules(loader.dataset)
    (batch,) = list(loader)
    assert_same_batch(batch["depth"], plugin.processor.load_batch(
        [_depth_png(i) for i in range(3)]))
