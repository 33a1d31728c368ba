"""The depth plugin on real files: metres .npy vs millimetre PNG, disparity, holes, bad input, training."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anchorbind.errors import ConfigError, InputError
from anchorbind.modalities.depth import DepthConfig, DepthPlugin
from anchorbind.registry import create_plugin

EMBED_DIM = 32
TINY = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "num_heads": 2}


def depth_plugin(**config) -> DepthPlugin:
    return DepthPlugin({**TINY, **config}, embed_dim=EMBED_DIM)


def scene(height: int = 60, width: int = 80, seed: int = 0) -> np.ndarray:
    """A room-like depth map in metres: a tilted floor-to-wall ramp with a box in front."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = 1.0 + 4.0 * rows / height + 0.5 * cols / width
    top, left = rng.integers(0, height // 2 + 1), rng.integers(0, width // 2 + 1)
    depth[top:top + height // 3, left:left + width // 3] = 0.8
    return depth.astype(np.float32)


def save_png_mm(path: Path, metres: np.ndarray) -> Path:
    Image.fromarray(np.round(metres * 1000).astype(np.uint16)).save(path)
    return path


def test_npy_metres_and_png_millimetres_give_the_same_input(tmp_path):
    metres = scene()
    np.save(tmp_path / "scene.npy", metres)
    png = save_png_mm(tmp_path / "scene.png", metres)
    assert Image.open(png).mode.startswith("I;16")
    plugin = depth_plugin()
    from_npy = plugin.load(tmp_path / "scene.npy")
    from_png = plugin.load(png)
    assert from_npy.shape == (1, 32, 32) and from_npy.dtype == torch.float32
    torch.testing.assert_close(from_npy, from_png, atol=2e-3, rtol=0)
    # every accepted form of the same map: bytes (sniffed), str path, HxW / 1xHxW / HxWx1 arrays, a tensor
    for same in (png.read_bytes(), str(tmp_path / "scene.npy"), metres, metres[None], metres[..., None],
                 torch.from_numpy(metres), torch.from_numpy(metres).double()):
        torch.testing.assert_close(plugin.load(same), from_npy if not isinstance(same, bytes) else from_png)
    bf16 = plugin.load(torch.from_numpy(metres).bfloat16())  # 8-bit mantissa: close, not equal
    torch.testing.assert_close(bf16, from_npy, atol=0.05, rtol=0)


def test_intrinsics_disparity_is_a_constant_multiple_of_inverse_depth(tmp_path):
    path = tmp_path / "scene.npy"
    np.save(path, scene())
    inverse = depth_plugin().disparity(path)
    stereo = depth_plugin(baseline=0.075, focal=518.8).disparity(path)
    torch.testing.assert_close(stereo / inverse, torch.full_like(inverse, 0.075 * 518.8))
    torch.testing.assert_close(inverse, torch.from_numpy(1.0 / scene()))
    # per-image normalisation removes the constant; fixed statistics keep it
    torch.testing.assert_close(depth_plugin().load(path), depth_plugin(baseline=0.075, focal=518.8).load(path),
                               atol=1e-5, rtol=0)
    fixed = {"normalization": "fixed", "disparity_mean": 0.5, "disparity_std": 0.25}
    assert not torch.allclose(depth_plugin(**fixed).load(path),
                              depth_plugin(**fixed, baseline=0.075, focal=518.8).load(path))


def test_depth_is_clipped_to_the_configured_range():
    metres = np.array([[0.01, 0.1, 1.0, 20.0, 500.0]], dtype=np.float32)
    disparity = depth_plugin(min_depth=0.1, max_depth=20.0).disparity(metres)
    torch.testing.assert_close(disparity, torch.tensor([[10.0, 10.0, 1.0, 0.05, 0.05]]))


def test_fixed_normalisation_with_fitted_statistics_standardises_the_data(tmp_path):
    paths = []
    for seed in range(4):
        paths.append(tmp_path / f"{seed}.npy")
        np.save(paths[-1], scene(32, 32, seed=seed))
    mean, std = depth_plugin().disparity_statistics(paths)
    plugin = depth_plugin(normalization="fixed", disparity_mean=mean, disparity_std=std)
    values = plugin.load_batch(paths)  # 32x32 maps at image_size 32: no resampling
    assert abs(values.mean().item()) < 1e-4 and abs(values.std(correction=0).item() - 1) < 1e-4


def test_zero_pixels_are_filled_counted_and_excluded_from_the_statistics(tmp_path):
    metres = scene(40, 40)
    holes = np.zeros_like(metres, dtype=bool)
    holes[:, :12] = True  # 30% of the pixels: the sensor saw nothing there
    png = save_png_mm(tmp_path / "holes.png", np.where(holes, 0, metres))
    plugin = depth_plugin(image_size=40, patch_size=8, max_depth=20.0)

    disparity = plugin.disparity(png)
    filled = disparity[torch.from_numpy(holes)]
    torch.testing.assert_close(filled, torch.full_like(filled, 1 / 20.0))  # filled with max_depth

    loaded = plugin.load(png)[0]
    measured = loaded[torch.from_numpy(~holes)]
    assert abs(measured.mean().item()) < 1e-3 and abs(measured.std(correction=0).item() - 1) < 1e-3
    assert loaded[torch.from_numpy(holes)].max() < measured.min()  # holes read as "farthest"
    stats = plugin.input_stats
    assert (stats.maps, stats.maps_with_invalid, stats.invalid_pixels, stats.pixels) == (1, 1, 480, 1600)
    assert stats.invalid_fraction == pytest.approx(0.3)

    with pytest.raises(InputError, match=r"holes\.png.*30\.0% of pixels have no measurement"):
        depth_plugin(max_invalid_fraction=0.2).load(png)
    mostly_empty = save_png_mm(tmp_path / "empty.png", np.where(np.arange(100).reshape(10, 10) < 95, 0, 2.0))
    with pytest.raises(InputError, match=r"empty\.png.*95\.0%.*max_invalid_fraction=0\.9"):
        plugin.load(mostly_empty)


def _pickled_npy(path: Path) -> None:
    np.save(path, np.array([{"depth": 1.0}], dtype=object), allow_pickle=True)


def _rgb_png(path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)


def _truncated_png(path: Path) -> None:
    save_png_mm(path, scene(32, 32))
    path.write_bytes(path.read_bytes()[:60])


BAD_INPUTS = {
    "nan.npy": (lambda p: np.save(p, np.where(scene() > 3, np.nan, scene())), "NaN"),
    "inf.npy": (lambda p: np.save(p, np.where(scene() > 3, np.inf, scene())), "infinite"),
    "negative.npy": (lambda p: np.save(p, -scene()), "negative"),
    "rgb.npy": (lambda p: np.save(p, np.stack([scene()] * 3, axis=-1)), r"shape \(60, 80, 3\).*colour"),
    "volume.npy": (lambda p: np.save(p, np.ones((2, 3, 4, 5), np.float32)), "HxW or 1xHxW"),
    "int.npy": (lambda p: np.save(p, np.ones((4, 4), np.uint16)), "dtype uint16.*float metres"),
    "pickled.npy": (_pickled_npy, "pickled"),
    "corrupt.npy": (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), "corrupt .npy"),
    "pickle.npy": (lambda p: p.write_bytes(pickle.dumps([1.0, 2.0])), "not a .npy file or a PNG"),
    "eight_bit.png": (lambda p: Image.fromarray(np.full((8, 8), 9, np.uint8)).save(p), "8-bit PNG"),
    "rgb.png": (_rgb_png, "mode 'RGB' .3 channel"),
    "truncated.png": (_truncated_png, "corrupt or truncated PNG"),
    "empty.npy": (lambda p: p.write_bytes(b""), "empty file"),
    "missing.npy": (lambda p: None, "unreadable file"),
}


@pytest.mark.parametrize("filename", sorted(BAD_INPUTS))
def test_bad_inputs_are_refused_naming_the_file_and_the_reason(tmp_path, filename):
    write, reason = BAD_INPUTS[filename]
    path = tmp_path / filename
    write(path)
    with pytest.raises(InputError, match=reason) as caught:
        depth_plugin().load(path)
    assert caught.value.source == path and caught.value.modality == "depth"
    assert filename in str(caught.value)


def test_eight_bit_png_is_read_when_allowed(tmp_path):
    path = tmp_path / "eight.png"
    Image.fromarray(np.arange(1, 65, dtype=np.uint8).reshape(8, 8)).save(path)
    disparity = depth_plugin(allow_8bit_png=True, png_scale=10.0).disparity(path)
    torch.testing.assert_close(disparity, torch.from_numpy(10.0 / np.arange(1, 65, dtype=np.float32)).reshape(8, 8))


def test_any_input_size_gives_unit_norm_embeddings():
    plugin = depth_plugin().eval()
    maps = [scene(1, 1), scene(7, 300), scene(480, 640), scene(33, 32)]
    with torch.no_grad():
        embeddings = plugin(plugin.load_batch(maps))
    assert embeddings.shape == (4, EMBED_DIM) and torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4))


def test_training_augmentation_is_random_and_evaluation_is_not():
    plugin = depth_plugin()
    metres = scene(64, 96)
    torch.manual_seed(0)
    crops = [plugin.load(metres, train=True) for _ in range(4)]
    assert all(c.shape == (1, 32, 32) for c in crops)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    torch.testing.assert_close(plugin.load(metres), plugin.load(metres), rtol=0, atol=0)
    never = depth_plugin(train_crop_scale=(1.0, 1.0), train_hflip_prob=0.0)
    square = scene(48, 48)
    torch.testing.assert_close(never.load(square, train=True), never.load(square), rtol=0, atol=0)


def test_config_is_checked():
    with pytest.raises(ConfigError, match=r"unknown config key.*'max_dpeth'"):
        create_plugin("depth", {"max_dpeth": 10}, embed_dim=EMBED_DIM)
    for bad, reason in [
        ({"min_depth": 5.0, "max_depth": 1.0}, "min_depth < max_depth"),
        ({"baseline": 0.075}, "both baseline and focal"),
        ({"normalization": "fixed"}, "needs disparity_mean and disparity_std"),
        ({"normalization": "minmax"}, "normalization must be one of"),
        ({"image_size": 100, "patch_size": 16}, "not a multiple of patch_size"),
        ({"max_invalid_fraction": 1.5}, "max_invalid_fraction"),
        ({"global_pool": "max"}, "global_pool must be one of"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            DepthConfig(**bad)
    plugin = create_plugin("depth", {"image_size": 48, "patch_size": 16}, embed_dim=EMBED_DIM)
    assert isinstance(plugin, DepthPlugin) and plugin.config.image_size == 48
    assert plugin.logit_scale().item() == pytest.approx(5.0)
    assert not plugin.logit_scale.learnable


def test_pooling_is_configurable():
    """``avg`` (default) reads every patch token; ``token`` reads the class token only."""
    maps = torch.randn(2, 1, 32, 32)
    for pool in ("avg", "token"):
        trunk = depth_plugin(global_pool=pool).trunk.eval()
        assert trunk.global_pool == pool
        tokens = trunk.forward_features(maps)
        expected = tokens[:, 1:].mean(1) if pool == "avg" else tokens[:, 0]
        torch.testing.assert_close(trunk(maps), trunk.fc_norm(expected))
    assert DepthConfig().global_pool == "avg"


def test_wrong_batch_layout_is_refused():
    plugin = depth_plugin()
    with pytest.raises(InputError, match=r"expected a float tensor \(B, 1, 32, 32\)"):
        plugin(torch.zeros(2, 3, 32, 32))


def test_one_optimizer_step_changes_the_trunk():
    torch.manual_seed(0)
    plugin = depth_plugin().train()
    batch = plugin.load_batch([scene(seed=s) for s in range(4)], train=True)
    targets = torch.nn.functional.normalize(torch.randn(4, EMBED_DIM), dim=-1)
    before = {n: p.detach().clone() for n, p in plugin.named_parameters()}
    optimizer = torch.optim.AdamW(plugin.parameters(), lr=1e-3)
    logits = plugin.logit_scale() * plugin(batch) @ targets.T
    labels = torch.arange(4)
    loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    optimizer.step()
    changed = {n for n, p in plugin.named_parameters() if not torch.equal(before[n], p)}
    assert {"trunk.patch_embed.proj.weight", "trunk.cls_token", "head.proj.weight"} <= changed
    assert all(n.startswith(("trunk.", "head.")) for n in before)  # the fixed logit scale is a buffer
    assert plugin.logit_scale().item() == pytest.approx(5.0)


def test_bind_model_embeds_depth_beside_images(tmp_path):
    from anchorbind.model import BindModel

    model = BindModel.from_config({"anchor": {"weights": "none"}, "modalities": {"depth": TINY}}).eval()
    np.save(tmp_path / "a.npy", scene())
    png = save_png_mm(tmp_path / "b.png", scene(seed=1))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "img.png")
    with torch.no_grad():
        emb = model.embed({"depth": [tmp_path / "a.npy", png], "image": [tmp_path / "img.png"]})
    assert emb["depth"].shape == (2, model.embed_dim) and emb["image"].shape == (1, model.embed_dim)
    torch.testing.assert_close(emb["depth"].norm(dim=-1), torch.ones(2))
