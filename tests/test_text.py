"""The text plugin: real packaged MiniLM, local folders, tuning modes, bad input, save/restore."""

from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from anchorbind.errors import ConfigError, InputError
from anchorbind.modalities.text import TextConfig, TextPlugin
from anchorbind.modalities.text.backbone import resolve_backbone
from anchorbind.model import BindModel
from anchorbind.registry import create_plugin, get_plugin_class

EMBED = 24
HEAD_AND_SCALE = {"head.norm.weight", "head.norm.bias", "head.proj.weight", "logit_scale.log_scale"}
SENTENCES = ["a red cube", "a blue sphere rolling on the floor", "a green cone"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach the hub: the packaged backbone must load with the hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def frozen() -> TextPlugin:
    torch.manual_seed(0)
    return create_plugin("text", embed_dim=EMBED)


@pytest.fixture(scope="module")
def full() -> TextPlugin:
    torch.manual_seed(0)
    return create_plugin("text", embed_dim=EMBED, tuning="full")


@pytest.fixture(scope="module")
def lora() -> TextPlugin:
    torch.manual_seed(0)
    return create_plugin("text", embed_dim=EMBED, tuning="lora", lora_r=4)


def trainable_names(plugin: TextPlugin) -> set[str]:
    return {n for n, p in plugin.named_parameters() if p.requires_grad}


def changed_by_training(plugin: TextPlugin, steps: int = 2) -> set[str]:
    """Names of the parameters that SGD steps on an InfoNCE-style loss actually move.

    Two steps, because LoRA's B starts at zero, so A gets no gradient until B has moved once.
    """
    plugin = copy.deepcopy(plugin).train()
    before = {n: p.detach().clone() for n, p in plugin.named_parameters()}
    opt = torch.optim.SGD([p for p in plugin.parameters() if p.requires_grad], lr=0.5)
    batch = plugin.load_batch(SENTENCES)
    target = F.normalize(torch.randn(3, EMBED, generator=torch.Generator().manual_seed(0)), dim=-1)
    for _ in range(steps):
        opt.zero_grad()
        logits = plugin.logit_scale() * plugin(batch) @ target.T
        F.cross_entropy(logits, torch.arange(3)).backward()
        opt.step()
    return {n for n, p in plugin.named_parameters() if not torch.equal(p.detach(), before[n])}


# ----------------------------------------------------------------------------- packaged weights
def test_registered_under_text_through_the_entry_point():
    assert get_plugin_class("text") is TextPlugin
    assert TextPlugin.sample_keys == ("txt", "text", "caption")
    config = TextConfig()
    assert config.backbone == "packaged" and config.tuning == "frozen" and config.max_length == 64
    assert config.logit_scale_init == pytest.approx(1 / 0.07) and config.logit_scale_learnable


def test_packaged_minilm_puts_paraphrases_closer_than_unrelated_text(frozen):
    with torch.no_grad():
        feats = F.normalize(frozen.forward_features(frozen.load_batch(
            ["a red cube", "a crimson box", "the stock market fell sharply"])), dim=-1)
    sims = feats @ feats.T
    assert frozen.trunk_dim == 384
    assert sims[0, 1] > sims[0, 2] + 0.2, sims


def test_embeddings_are_unit_norm_with_anchor_width(frozen):
    frozen.eval()
    with torch.no_grad():
        emb = frozen(frozen.load_batch(["one", "two words", "three little words"]))
    assert emb.shape == (3, EMBED)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_padding_does_not_change_a_text_features(frozen):
    frozen.eval()
    with torch.no_grad():
        alone = frozen.forward_features(frozen.load_batch(["a red cube"]))
        padded = frozen.forward_features(frozen.load_batch(["a red cube", "a much longer sentence " * 5]))
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def test_collate_pads_and_truncates_to_max_length(frozen):
    batch = frozen.load_batch(["short", "word " * 500])
    assert batch["input_ids"].shape == (2, frozen.config.max_length)
    assert batch["attention_mask"][0].sum() < frozen.config.max_length
    assert batch["attention_mask"][1].sum() == frozen.config.max_length
    assert frozen.batch_size(batch) == 2


# ----------------------------------------------------------------------------- tuning modes
def test_frozen_trains_only_head_and_scale_and_backbone_stays_eval(frozen):
    assert trainable_names(frozen) == HEAD_AND_SCALE
    assert changed_by_training(frozen, steps=1) == HEAD_AND_SCALE
    parent = torch.nn.ModuleDict({"text": frozen})
    parent.train()
    assert frozen.head.training and not frozen.trunk.training
    assert not any(m.training for m in frozen.trunk.modules())
    features = frozen.forward_features(frozen.load_batch(SENTENCES))
    assert not features.requires_grad, "autograd must not run through a frozen backbone"
    assert frozen(frozen.load_batch(SENTENCES)).requires_grad
    parent.eval()


def test_full_finetuning_trains_and_moves_every_parameter(full):
    names = {n for n, _ in full.named_parameters()}
    assert trainable_names(full) == names
    assert not any("pooler" in n for n in names), "the unused pooler would never get a gradient"
    assert changed_by_training(full, steps=1) == names
    full.train()
    assert full.trunk.training


def test_lora_trains_only_adapters_head_and_scale(lora):
    names = trainable_names(lora)
    adapters = {n for n in names if "lora_" in n}
    assert adapters and names == adapters | HEAD_AND_SCALE
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapters} == {"query", "value"}
    assert changed_by_training(lora) == names
    lora.train()
    assert lora.trunk.training, "LoRA keeps the backbone's dropout in training"


# ----------------------------------------------------------------------------- other backbones
def test_local_folder_backbone(tmp_path: Path):
    folder = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    packaged = Path(resolve_backbone("packaged"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(packaged / name, folder / name)
    plugin = create_plugin("text", embed_dim=EMBED, backbone=str(folder), tuning="lora", lora_r=2)
    assert plugin.trunk_dim == 32
    assert plugin(plugin.load_batch(["hello world", "a second text"])).shape == (2, EMBED)
    with pytest.raises(ConfigError, match="exceeds the 64 positions"):
        create_plugin("text", embed_dim=EMBED, backbone=str(folder), max_length=65)
    with pytest.raises(ConfigError, match=r"lora_target_modules.*tiny-bert"):
        create_plugin("text", embed_dim=EMBED, backbone=str(folder), tuning="lora", lora_target_modules=["qkv"])


def test_missing_backbones_are_config_errors_naming_them(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'/no/such/folder'.*no such folder"):
        create_plugin("text", embed_dim=EMBED, backbone="/no/such/folder")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file, not a transformers folder"):
        create_plugin("text", embed_dim=EMBED, backbone=str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"local folder\) could not be loaded"):
        create_plugin("text", embed_dim=EMBED, backbone=str(tmp_path))
    with pytest.raises(ConfigError, match=r"'anchorbind-test/no-such-model'.*HF_HUB_OFFLINE is set"):
        create_plugin("text", embed_dim=EMBED, backbone="anchorbind-test/no-such-model")


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_name_the_input_and_the_reason(frozen, tmp_path: Path):
    with pytest.raises(InputError, match="empty text") as err:
        frozen.load(" \n\t ")
    assert err.value.modality == "text"
    with pytest.raises(InputError, match=r"<3 bytes>: not UTF-8"):
        frozen.load(b"\xff\xfe\xfa")
    with pytest.raises(InputError, match=r"missing\.txt.*unreadable"):
        frozen.load(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(InputError, match=r"blank\.txt.*empty text"):
        frozen.load(tmp_path / "blank.txt")
    with pytest.raises(InputError, match="expected a string"):
        frozen.load(3.5)  # type: ignore[arg-type]


def test_good_inputs_of_every_kind(frozen, tmp_path: Path):
    (tmp_path / "caption.txt").write_text("  un cube rouge\n", encoding="utf-8")
    assert frozen.load(tmp_path / "caption.txt") == "un cube rouge"
    assert frozen.load("  a caption \n") == "a caption"
    assert frozen.load("ünïcödé".encode()) == "ünïcödé"


def test_config_errors():
    with pytest.raises(ConfigError, match="tunning"):
        create_plugin("text", embed_dim=EMBED, tunning="full")
    with pytest.raises(ConfigError, match="tuning must be one of"):
        create_plugin("text", embed_dim=EMBED, tuning="half")
    with pytest.raises(ConfigError, match="max_length must be at least 2"):
        TextConfig(max_length=0)
    with pytest.raises(ConfigError, match="lora_r must be positive"):
        TextConfig(tuning="lora", lora_r=0)
    with pytest.raises(ConfigError, match="exceeds the 512 positions"):
        create_plugin("text", embed_dim=EMBED, max_length=1000)


# ----------------------------------------------------------------------------- copies and checkpoints
@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_deepcopy_and_pickle_give_the_same_embeddings(mode, frozen, lora):
    plugin = {"frozen": frozen, "lora": lora}[mode].eval()
    batch = plugin.load_batch(SENTENCES)
    with torch.no_grad():
        expected = plugin(batch)
        for clone in (copy.deepcopy(plugin), pickle.loads(pickle.dumps(plugin))):
            clone.eval()
            assert torch.equal(clone(clone.load_batch(SENTENCES)), expected)


@pytest.mark.parametrize("text_config", [{}, {"tuning": "lora", "lora_r": 2}], ids=["frozen", "lora"])
def test_bind_model_save_and_restore_is_bit_identical(text_config, tmp_path: Path):
    torch.manual_seed(0)
    model = BindModel.from_config({"anchor": {"weights": "none", "image_size": 32},
                                   "modalities": {"text": text_config}}).eval()
    with torch.no_grad():  # move trained weights off their init so a silent re-init would show
        for p in model.plugins.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    before = model.embed({"text": SENTENCES})["text"]
    model.save_pretrained(tmp_path / "saved")
    torch.manual_seed(123)  # restoring must not depend on the RNG
    restored = BindModel.from_pretrained(tmp_path / "saved").eval()
    after = restored.embed({"text": SENTENCES})["text"]
    assert torch.equal(before, after)
    assert restored.plugin("text").config == model.plugin("text").config
