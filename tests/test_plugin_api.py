"""The plugin API from the outside: a separately packaged plugin, really installed, needs no core edit.

``examples/anchorbind-imu`` is installed with pip into a temporary target directory (offline: no
index, no build isolation) and exercised in fresh interpreters whose ``PYTHONPATH`` holds that
directory, so the ``imu_conv`` modality can only come from the entry point of the installed
distribution. The ``check_*`` functions run inside those interpreters. (The example's modality is
``imu_conv``, not ``imu``: that name belongs to AnchorBind's built-in IMU plugin, which these tests
neither need nor exclude.)
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO, subprocess_env

EXAMPLE = REPO / "examples" / "anchorbind-imu"
EMBED_DIM = 40


@pytest.fixture(scope="module")
def imu_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/anchorbind-imu`` pip-installed into a fresh target directory."""
    work = tmp_path_factory.mktemp("imu-plugin")
    # build from a copy: an in-tree setuptools build would leave build/ and *.egg-info in the repo
    source = shutil.copytree(EXAMPLE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--target", str(target), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        "pip could not build the example offline (its backend needs setuptools>=70.1, from the dev extra):\n"
        + done.stdout + done.stderr
    )
    (dist_info,) = target.glob("anchorbind_imu-*.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "[anchorbind.modalities]" in entry_points and "imu_conv = anchorbind_imu:ImuPlugin" in entry_points
    return target


def run_with_plugin(site: Path, check: str, *args: str, cwd: Path | None = None) -> str:
    """Run ``tests.test_plugin_api.<check>(*args)`` in a fresh interpreter that sees ``site``."""
    env = subprocess_env(site, REPO)  # REPO: only so the child can import the tests package
    code = f"import sys\nfrom tests.test_plugin_api import {check}\n{check}(*sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd or site.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{check} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def write_recordings(directory: Path) -> list[Path]:
    """Three recordings of different lengths and both layouts: (T, 6) and (6, T)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    shapes = [(500, 6), (6, 180), (40, 6)]
    paths = []
    for i, shape in enumerate(shapes):
        paths.append(directory / f"rec{i}.npy")
        np.save(paths[-1], rng.normal(size=shape).astype(np.float32))
    return paths


def one_infonce_step(plugin: torch.nn.Module, batch: torch.Tensor, targets: torch.Tensor,
                     lr: float = 1e-3) -> tuple[float, set[str]]:
    """One AdamW step of symmetric InfoNCE between ``plugin(batch)`` and fixed anchor-like ``targets``.

    Asserts that every trainable parameter received a finite gradient, and returns the loss and
    the names of the parameters the step changed.
    """
    plugin.train()
    optimizer = torch.optim.AdamW([p for p in plugin.parameters() if p.requires_grad], lr=lr)
    before = {n: p.detach().clone() for n, p in plugin.named_parameters()}
    logits = plugin.logit_scale() * plugin(batch) @ targets.T
    labels = torch.arange(len(targets))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for name, param in plugin.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), f"bad gradient for {name}"
    optimizer.step()
    changed = {n for n, p in plugin.named_parameters() if not torch.equal(before[n], p)}
    return float(loss), changed


# ---------------------------------------------------------------- run inside the child interpreter
def check_discovery(site: str) -> None:
    import anchorbind_imu

    from anchorbind.registry import get_plugin_class, list_modalities

    assert "imu_conv" in list_modalities(), list_modalities()
    assert get_plugin_class("imu_conv") is anchorbind_imu.ImuPlugin
    assert Path(anchorbind_imu.__file__).resolve().is_relative_to(Path(site).resolve())


def check_not_registered() -> None:
    from anchorbind.registry import list_modalities

    assert "imu_conv" not in list_modalities(), "imu_conv is registered without the example being installed"


def check_embedding(tmp: str) -> None:
    from anchorbind.errors import InputError
    from anchorbind.registry import create_plugin

    plugin = create_plugin("imu_conv", {"num_samples": 128}, embed_dim=EMBED_DIM).eval()
    paths = write_recordings(Path(tmp) / "embed")
    with torch.no_grad():
        embeddings = plugin(plugin.load_batch(paths))
    assert embeddings.shape == (3, EMBED_DIM) and torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    bad = Path(tmp) / "nan.npy"
    np.save(bad, np.full((64, 6), np.nan, dtype=np.float32))
    try:
        plugin.load(bad)
    except InputError as err:
        assert "nan.npy" in str(err) and "NaN" in str(err), err
    else:
        raise AssertionError("a NaN recording was accepted")


def check_bind_model(tmp: str) -> None:
    from PIL import Image

    from anchorbind.model import BindModel

    model = BindModel.from_config({"anchor": {"weights": "none"}, "modalities": {"imu_conv": {}}}).eval()
    recordings = write_recordings(Path(tmp) / "model")
    image = Path(tmp) / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    with torch.no_grad():
        emb = model.embed({"imu_conv": recordings, "image": [image]})
    assert emb["imu_conv"].shape == (3, model.embed_dim) and emb["image"].shape == (1, model.embed_dim)
    saved = model.save_pretrained(Path(tmp) / "saved")
    with torch.no_grad():
        again = type(model).from_pretrained(saved).eval().embed({"imu_conv": recordings})
    torch.testing.assert_close(again["imu_conv"], emb["imu_conv"])


def check_one_training_step(tmp: str) -> None:
    from anchorbind.registry import create_plugin

    torch.manual_seed(0)
    plugin = create_plugin("imu_conv", embed_dim=EMBED_DIM)
    batch = plugin.load_batch(write_recordings(Path(tmp) / "train"), train=True)
    targets = F.normalize(torch.randn(3, EMBED_DIM), dim=-1)
    loss, changed = one_infonce_step(plugin, batch, targets)
    assert np.isfinite(loss)
    trainable = {n for n, p in plugin.named_parameters() if p.requires_grad}
    assert changed == trainable, sorted(trainable - changed)
    assert any(n.startswith("trunk.") for n in changed) and "head.proj.weight" in changed


# ---------------------------------------------------------------- the tests
def test_plugin_is_discovered_through_its_entry_point(imu_site):
    if importlib.util.find_spec("anchorbind_imu") is None:  # control: without the install there is no imu_conv
        run_with_plugin(imu_site.parent / "empty", "check_not_registered", cwd=imu_site.parent)
    run_with_plugin(imu_site, "check_discovery", str(imu_site))


def test_installed_plugin_embeds_files_to_unit_norm_vectors(imu_site, tmp_path):
    run_with_plugin(imu_site, "check_embedding", str(tmp_path))


def test_bind_model_built_from_config_embeds_the_plugin_and_images(imu_site, tmp_path):
    if not (REPO / "bind" / "anchor.py").is_file():
        pytest.skip("bind/anchor.py (the frozen anchor) is not there yet")
    run_with_plugin(imu_site, "check_bind_model", str(tmp_path))


def test_gradients_flow_through_the_installed_plugin(imu_site, tmp_path):
    run_with_plugin(imu_site, "check_one_training_step", str(tmp_path))


def test_installed_plugin_passes_the_contract_suite(imu_site):
    env = subprocess_env(imu_site)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "imu_conv",
         str(REPO / "tests" / "test_plugin_contract.py")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" not in done.stdout.splitlines()[-1], done.stdout


def test_check_plugin_command_passes_the_installed_plugin(imu_site, tmp_path):
    """``anchorbind check-plugin imu_conv``: the shipped contract kit, run against the entry point."""
    done = subprocess.run([sys.executable, "-m", "anchorbind", "check-plugin", "imu_conv"],
                          env=subprocess_env(imu_site), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert len(lines) >= 10 and all(line.startswith("PASS ") for line in lines), done.stdout
    assert "imu_conv: all" in done.stdout.splitlines()[-1], done.stdout


def test_example_package_runs_the_contract_kit_in_its_own_tests(imu_site, tmp_path):
    """The example's ``tests/test_contract.py`` (``assert_plugin_contract("imu_conv")``), run by pytest as its
    author would."""
    tests = imu_site.parent / "src" / "tests" / "test_contract.py"  # the fixture's copy of the example
    assert tests.is_file(), f"{EXAMPLE / 'tests' / 'test_contract.py'} is missing"
    # cwd outside the copy, so `anchorbind_imu` can only come from the installed site
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                          env=subprocess_env(imu_site), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, done.stdout


def test_anchorbind_train_trains_the_installed_plugin(imu_site, tmp_path):
    """The real trainer (``python -m anchorbind.train``) binds the out-of-tree modality to the anchor."""
    import io

    import webdataset as wds
    import yaml
    from PIL import Image

    rng = np.random.default_rng(0)
    shards = tmp_path / "shards"
    shards.mkdir()
    with wds.TarWriter(str(shards / "imu-000000.tar")) as writer:
        for i in range(16):
            image = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image, format="PNG")
            recording = io.BytesIO()
            np.save(recording, rng.normal(size=(300, 6)).astype(np.float32))
            writer.write({"__key__": f"s{i:04d}", "png": image.getvalue(), "imu.npy": recording.getvalue()})
    config = {
        "output_dir": str(tmp_path / "run"), "steps": 2, "log_every": 1, "checkpoint_every": 2,
        "model": {"anchor": {"weights": "packaged", "image_size": 64}, "modalities": {"imu_conv": {}}},
        "data": {"train_shards": str(shards), "batch_size": 8, "num_workers": 0, "anchor": "live"},
    }
    (tmp_path / "imu.yaml").write_text(yaml.safe_dump(config))
    env = subprocess_env(imu_site)
    done = subprocess.run([sys.executable, "-m", "anchorbind.train", "--config", str(tmp_path / "imu.yaml")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "run" / "train_log.csv").read_text()
    assert "contrastive/imu_conv" in log.splitlines()[0]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
