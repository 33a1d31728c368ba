"""BindModel: every modality embedded into one space, saved and restored bit-identically."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from skimage import data

from anchorbind.errors import ConfigError, ModelFileError, UnknownModalityError
from anchorbind.model import BindModel
from tests.conftest import REPO, subprocess_env

TINY = {
    "text": {"tuning": "lora", "lora_r": 2},
    "audio": {"width": 32, "depth": 1, "num_heads": 2},
    "depth": {"image_size": 32, "width": 32, "depth": 1, "num_heads": 2},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    Image.fromarray(data.chelsea()).save(root / "cat.png")
    sf.write(root / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * np.arange(40000) / 16000), 16000)
    np.save(root / "depth.npy", np.linspace(1, 4, 64 * 64, dtype=np.float32).reshape(64, 64))
    return {"image": [str(root / "cat.png")], "text": ["a cat", "a red cube"], "audio": [str(root / "tone.wav")],
            "depth": [str(root / "depth.npy")]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BindModel.from_config({"anchor": {"image_size": 96}, "modalities": TINY}).eval()


def test_embed_every_modality_into_the_anchor_space(model, inputs):
    emb = model.embed(inputs)
    assert set(emb) == {"image", "text", "audio", "depth"}
    for name, value in emb.items():
        assert value.shape == (len(inputs[name]), model.embed_dim)
        torch.testing.assert_close(value.norm(dim=-1), torch.ones(len(inputs[name])))


def test_save_and_restore_is_bit_identical_and_stores_only_trainable_weights(model, inputs, tmp_path):
    # move the weights away from their initial values so a silent re-initialisation would show
    with torch.no_grad():
        for p in model.plugins.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    before = model.embed(inputs)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert not any(k.startswith("anchor.") for k in stored)
    assert not any("text.trunk" in k and "lora_" not in k for k in stored), "the frozen MiniLM is not stored"
    restored = BindModel.from_pretrained(tmp_path / "saved").eval()
    after = restored.embed(inputs)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["modalities"]["text"]["tuning"] == "lora"


def test_unknown_modality_and_config_errors(model):
    with pytest.raises(UnknownModalityError, match="lidar"):
        model.embed({"lidar": ["x.npy"]})
    with pytest.raises(UnknownModalityError, match="registered"):
        BindModel.from_config({"modalities": {"lidar": {}}})
    with pytest.raises(ConfigError, match="widht"):
        BindModel.from_config({"modalities": {"audio": {"widht": 3}}})
    with pytest.raises(ConfigError, match="anchr"):
        BindModel.from_config({"anchr": {}})


def test_from_pretrained_refuses_non_models(tmp_path):
    with pytest.raises(ModelFileError, match="not a saved BindModel"):
        BindModel.from_pretrained(tmp_path)
    with pytest.raises(ModelFileError, match="no such model folder"):
        BindModel.from_pretrained(tmp_path / "missing")


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Python quickstart\n\n```python\n(.*?)```", readme, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(1, 1280)" in done.stdout and (tmp_path / "my-model" / "model.safetensors").is_file()
