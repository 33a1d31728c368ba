"""The frozen image anchor: real packaged weights, real photographs, real checkpoint files."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.errors import ConfigError, InputError
from anchorbind.weights import (
    CheckpointError,
    load_state_dict_file,
    load_weights_into,
    packaged_efficientnet_lite0,
    remap_by_order,
)
from tests.conftest import subprocess_env

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup
TRIPOD_CLASS = 872


@pytest.fixture(scope="module")
def anchor() -> FrozenAnchor:
    return FrozenAnchor()


@pytest.fixture(scope="module")
def random_anchor() -> FrozenAnchor:
    return FrozenAnchor({"weights": "none"})


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "camera": skimage.data.camera(),
    }


@pytest.fixture(scope="module")
def photo_batch(anchor: FrozenAnchor, photos: dict[str, np.ndarray]) -> torch.Tensor:
    return anchor.load_batch([photos["chelsea"], photos["coffee"]])


def _top(logits: torch.Tensor, k: int) -> set[int]:
    return set(logits.topk(k).indices.tolist())


def _save_pth(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------------- packaged weights
@pytest.mark.parametrize(
    ("photo", "classes", "k"),
    [("chelsea", CAT_CLASSES, 3), ("coffee", COFFEE_CLASSES, 3), ("camera", {TRIPOD_CLASS}, 1)],
)
def test_packaged_weights_recognise_real_photographs(anchor, photos, photo, classes, k):
    # camera() is a grayscale photo (photographer with a tripod): exercises the HxW path too.
    logits = anchor.classify(anchor.load_batch([photos[photo]]))[0]
    assert _top(logits, k) & classes, f"{photo}: top-{k} {logits.topk(k).indices.tolist()}"


def test_random_weights_do_not_recognise_the_cat(random_anchor, photos):
    """The recognition test above depends on the weights, not on the pipeline alone."""
    logits = random_anchor.classify(random_anchor.load_batch([photos["chelsea"]]))[0]
    assert not _top(logits, 3) & CAT_CLASSES


def test_packaged_checkpoint_is_found_and_mapped_by_order(anchor):
    path = packaged_efficientnet_lite0()
    assert path.is_file() and path.suffix == ".pth"
    source = load_state_dict_file(path)
    assert next(iter(source)).startswith("_conv_stem")  # EfficientNet-PyTorch naming
    mapped = remap_by_order(source, anchor.model.state_dict(), source_name=str(path))
    assert set(mapped) == set(anchor.model.state_dict())
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])
    assert torch.equal(mapped["bn2.running_var"], source["_bn1.running_var"])
    for key, value in anchor.model.state_dict().items():
        assert torch.equal(mapped[key], value), key


def test_remap_by_order_refuses_a_different_layout(anchor):
    source = load_state_dict_file(packaged_efficientnet_lite0())
    keys = list(source)
    swapped = dict(source)
    # Swap BatchNorm weight and bias order in one layer: same shapes, so only leaf names catch it.
    i = keys.index("_blocks.3._bn1.weight")
    reordered = [*keys[:i], keys[i + 1], keys[i], *keys[i + 2 :]]
    swapped = {k: source[k] for k in reordered}
    with pytest.raises(CheckpointError, match=r"#\d+ is '_blocks\.3\._bn1\.bias'"):
        remap_by_order(swapped, anchor.model.state_dict(), source_name="swapped")
    truncated = dict(list(source.items())[:-8])
    with pytest.raises(CheckpointError, match="tensors but the model has"):
        remap_by_order(truncated, anchor.model.state_dict(), source_name="truncated")
    wrong_shape = dict(source)
    wrong_shape["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"#0 is '_conv_stem\.weight' \(16, 3, 3, 3\)"):
        remap_by_order(wrong_shape, anchor.model.state_dict(), source_name="wrong")


def test_checkpoint_without_batchnorm_counters_loads(anchor, photo_batch):
    source = load_state_dict_file(packaged_efficientnet_lite0())
    no_counters = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    model = timm.create_model("tf_efficientnet_lite0")
    report = load_weights_into(model, no_counters, source_name="no-counters", optional_keys=())
    assert report.mode == "remapped" and len(report.kept_counters) == 49
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(photo_batch), anchor.classify(photo_batch), atol=1e-5)


# ---------------------------------------------------------------------- frozen
def test_anchor_is_frozen_even_inside_a_training_parent(anchor, photo_batch):
    parent = nn.Sequential(anchor, nn.Linear(anchor.embed_dim, 4))
    stats_before = anchor.model.bn2.running_mean.clone()
    parent.train()
    assert parent[1].training
    assert not anchor.training
    assert not any(m.training for m in anchor.modules())
    assert not any(p.requires_grad for p in anchor.parameters())

    images = photo_batch.clone().requires_grad_(True)
    with torch.enable_grad():
        embeddings = anchor(images)
    assert embeddings.grad_fn is None and not embeddings.requires_grad
    assert torch.equal(anchor.model.bn2.running_mean, stats_before)  # BN did not update
    assert embeddings.shape == (2, anchor.embed_dim) == (2, 1280)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    features = anchor.forward_features(photo_batch)
    assert torch.allclose(nn.functional.normalize(features, dim=-1), embeddings, atol=1e-6)
    assert anchor.train(True) is anchor and not anchor.training


def test_a_cat_is_closer_to_a_cat_than_to_coffee(anchor, photos):
    crop = photos["chelsea"][20:280, 40:400]
    emb = anchor(anchor.load_batch([photos["chelsea"], crop, photos["coffee"]]))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


# ---------------------------------------------------------------------- local checkpoints
def test_local_checkpoints_reproduce_the_packaged_anchor(anchor, random_anchor, photo_batch, tmp_path):
    state = {k: v.contiguous() for k, v in anchor.model.state_dict().items()}
    st_path = tmp_path / "lite0.safetensors"
    save_file(state, str(st_path))
    files = {
        "safetensors": st_path,
        "pth": _save_pth(state, tmp_path / "lite0.pth"),
        "wrapped": _save_pth({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt"),
        "ddp": _save_pth({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.bin"),
    }
    expected = anchor(photo_batch)
    digest = anchor.identity.split("|")[2]
    for name, path in files.items():
        loaded = FrozenAnchor(AnchorConfig(weights=str(path)))
        assert torch.equal(loaded(photo_batch), expected), name
        assert loaded.identity == f"tf_efficientnet_lite0|file|{digest}|224x224", name
    assert anchor.identity.startswith("tf_efficientnet_lite0|packaged|sha256:")
    assert random_anchor.identity != anchor.identity
    assert random_anchor.identity == FrozenAnchor({"weights": "none"}).identity  # seeded init


def test_headless_checkpoint_embeds_but_cannot_classify(anchor, photo_batch, tmp_path):
    state = {k: v for k, v in anchor.model.state_dict().items() if not k.startswith("classifier.")}
    path = _save_pth(state, tmp_path / "headless.pth")
    headless = FrozenAnchor({"weights": str(path)})
    assert torch.equal(headless(photo_batch), anchor(photo_batch))
    with pytest.raises(ConfigError, match="no classifier head"):
        headless.classify(photo_batch)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_objects_are_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = _save_pth({"weight": torch.zeros(2), "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*refused.*io\.open.*weights_only=True"):
        FrozenAnchor({"weights": str(path)})
    assert not marker.exists()


def test_unusable_checkpoint_files_are_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match=r"nope\.safetensors"):
        FrozenAnchor({"weights": str(missing)})
    with pytest.raises(CheckpointError, match=r"nope\.safetensors.*not found"):
        load_state_dict_file(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors.*not a valid safetensors"):
        FrozenAnchor({"weights": str(garbage)})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"junk\.pth.*unreadable.*not a PyTorch checkpoint"):
        FrozenAnchor({"weights": str(junk)})
    not_flat = _save_pth({"weights": [torch.zeros(1)]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth.*not tensors"):
        load_state_dict_file(not_flat)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    resnet = timm.create_model("resnet10t")
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"resnet10t\.safetensors.*cannot map by order"):
        FrozenAnchor({"weights": str(path)})
    partial = dict(timm.create_model("tf_efficientnet_lite0").state_dict())
    del partial["conv_head.weight"]
    with pytest.raises(CheckpointError, match=r"missing \['conv_head\.weight'\]"):
        FrozenAnchor({"weights": str(_save_pth(partial, tmp_path / "partial.pth"))})


# ---------------------------------------------------------------------- any timm model
def test_another_timm_architecture_from_a_local_file(photos, tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet10t").eval()
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))

    anchor = FrozenAnchor({"model": "resnet10t", "weights": str(path)})
    assert anchor.embed_dim == 512
    assert anchor.data_config["mean"] == reference.pretrained_cfg["mean"]  # ImageNet stats, not Lite0's
    batch = anchor.load_batch([photos["chelsea"], photos["coffee"]])
    with torch.no_grad():
        expected = nn.functional.normalize(
            reference.forward_head(reference.forward_features(batch), pre_logits=True)
        )
        expected_logits = reference(batch)
    assert torch.allclose(anchor(batch), expected, atol=1e-5)
    assert torch.allclose(anchor.classify(batch), expected_logits, atol=1e-4)
    assert anchor.identity.startswith("resnet10t|file|sha256:")


def test_fixed_size_vit_is_built_at_the_requested_resolution(photos):
    vit = FrozenAnchor({"model": "vit_tiny_patch16_224", "weights": "none", "image_size": 96})
    batch = vit.load_batch([photos["chelsea"]])
    assert batch.shape == (1, 3, 96, 96)
    assert vit(batch).shape == (1, vit.embed_dim) == (1, 192)
    assert vit.identity.endswith("|96x96")


# ---------------------------------------------------------------------- preprocessing
def test_preprocessing_follows_the_model_data_config(anchor, photos):
    cfg = anchor.model.pretrained_cfg
    assert anchor.data_config["mean"] == cfg["mean"] and anchor.data_config["std"] == cfg["std"]
    gray = np.full((50, 70, 3), 200, dtype=np.uint8)
    tensor = anchor.load(gray)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    for c in range(3):
        expected = (200 / 255 - cfg["mean"][c]) / cfg["std"][c]
        assert torch.allclose(tensor[c], torch.full_like(tensor[c], expected), atol=1e-4)

    small = FrozenAnchor({"weights": "none", "image_size": 160})
    assert small.load(photos["chelsea"]).shape == (3, 160, 160)
    assert small.data_config["input_size"] == (3, 160, 160)
    assert small.identity.endswith("|160x160") and anchor.identity.endswith("|224x224")


def test_all_input_kinds_give_the_same_tensor(anchor, photos, tmp_path):
    rgb = photos["chelsea"]
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    path = tmp_path / "chelsea.png"
    path.write_bytes(png.getvalue())
    reference = anchor.load(rgb)
    for source in (
        path,
        str(path),
        png.getvalue(),
        Image.fromarray(rgb),
        Image.fromarray(rgb).convert("RGBA"),
    ):
        assert torch.equal(anchor.load(source), reference), type(source).__name__
    gray = photos["camera"]
    assert torch.equal(anchor.load(gray), anchor.load(gray[..., None]))
    assert torch.equal(anchor.load(gray), anchor.load(np.repeat(gray[..., None], 3, axis=-1)))


def test_exif_orientation_is_applied(anchor, photos):
    """Phone photos store rotation in EXIF; the anchor must see them upright."""
    plain, rotated = io.BytesIO(), io.BytesIO()
    image = Image.fromarray(photos["chelsea"])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(plain, format="JPEG", quality=95)
    image.save(rotated, format="JPEG", quality=95, exif=exif)
    upright = Image.open(io.BytesIO(plain.getvalue())).transpose(Image.Transpose.ROTATE_270)
    assert torch.equal(anchor.load(rotated.getvalue()), anchor.load(upright))
    assert not torch.equal(anchor.load(rotated.getvalue()), anchor.load(plain.getvalue()))


def test_train_mode_loading_is_random_but_well_formed(anchor, photos):
    torch.manual_seed(0)
    a, b = anchor.load(photos["chelsea"], train=True), anchor.load(photos["chelsea"], train=True)
    assert a.shape == b.shape == (3, 224, 224)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="empty"):
        anchor.collate([])


# ---------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_input_and_the_reason(anchor, photos, tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(photos["chelsea"]).save(jpeg, format="JPEG")
    truncated = jpeg.getvalue()[: len(jpeg.getvalue()) // 3]
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is not a picture")
    cases = [
        (tmp_path / "missing.jpg", r"'.*missing\.jpg'.*unreadable file"),
        (text_file, r"notes\.jpg.*not an image"),
        (b"definitely not an image", r"<23 bytes>.*not an image"),
        (truncated, r"corrupt or truncated"),
        (np.zeros((8, 8, 2), dtype=np.uint8), r"shape=\(8, 8, 2\).*expected an HxW"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), r"shape=\(2, 8, 8, 3\)"),
        (np.zeros((8, 8, 3), dtype=np.float32), r"expected a uint8 array"),
        (np.zeros((0, 8, 3), dtype=np.uint8), r"empty image"),
        (42, r"unsupported type int"),
    ]
    for source, pattern in cases:
        with pytest.raises(InputError, match=pattern) as info:
            anchor.load(source)
        assert info.value.modality == "image" and info.value.source is source
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        anchor(torch.zeros(3, 224, 224))


# ---------------------------------------------------------------------- configuration
def test_bad_configs_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key.*'wieghts'"):
        FrozenAnchor({"wieghts": "none"})
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet_10t'.*resnet10t"):
        FrozenAnchor({"model": "resnet_10t", "weights": "none"})
    with pytest.raises(ConfigError, match=r"only with model.*'resnet10t'"):
        FrozenAnchor({"model": "resnet10t"})
    with pytest.raises(ConfigError, match="neither one of"):
        FrozenAnchor({"weights": str(tmp_path / "typo")})
    with pytest.raises(ConfigError, match="image_size: must be positive"):
        FrozenAnchor({"weights": "none", "image_size": 0})


def test_timm_weights_offline_fail_with_a_clear_message(tmp_path):
    """A real subprocess with the Hugging Face Hub switched off: no network is touched."""
    script = textwrap.dedent(
        """
        from anchorbind.anchor import FrozenAnchor
        from anchorbind.errors import ConfigError
        try:
            FrozenAnchor({"model": "resnet10t", "weights": "timm"})
        except ConfigError as err:
            print("CONFIG_ERROR:", err)
        """
    )
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "CONFIG_ERROR: anchor.weights='timm'" in result.stdout, result.stdout + result.stderr
    assert "Hugging Face Hub" in result.stdout


# ---------------------------------------------------------------------- memory layout
def test_memory_format_auto_is_channels_last_for_convnets_and_agrees_with_contiguous(anchor, photo_batch):
    assert anchor.memory_format == torch.channels_last
    assert anchor.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = FrozenAnchor({"memory_format": "contiguous"})
    assert contiguous.memory_format == torch.contiguous_format and contiguous.identity == anchor.identity
    assert torch.allclose(anchor(photo_batch), contiguous(photo_batch), atol=1e-6)
    vit = FrozenAnchor({"model": "vit_tiny_patch16_224", "weights": "none", "image_size": 64})
    assert vit.memory_format == torch.contiguous_format  # one convolution: the patch embedding
    with pytest.raises(ConfigError, match=r"anchor\.memory_format: must be one of"):
        FrozenAnchor({"memory_format": "nhwc"})
