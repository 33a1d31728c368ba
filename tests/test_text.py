"""The text plugin: real packaged MiniLM, local folders, tuning modes, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from bind.errors import ConfigError, InputError
from bind.registry import create_plugin
from modalities.text.backbone import resolve_backbone

EMBED = 24


@pytest.fixture(scope="module")
def frozen():
    return create_plugin("text", embed_dim=EMBED)


def trainable_names(plugin) -> set[str]:
    return {n for n, p in plugin.named_parameters() if p.requires_grad}


def test_packaged_minilm_is_real_pretrained_weights(frozen):
    feats = F.normalize(frozen.forward_features(frozen.load_batch(
        ["a red cube", "a crimson box", "the stock market fell sharply"])), dim=-1)
    sims = feats @ feats.T
    assert sims[0, 1] > sims[0, 2] + 0.2, sims


def test_embeddings_are_unit_norm_with_anchor_width(frozen):
    emb = frozen(frozen.load_batch(["one", "two words", "three little words"]))
    assert emb.shape == (3, EMBED)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_frozen_mode_trains_only_head_and_scale_and_stays_eval(frozen):
    assert trainable_names(frozen) == {"head.norm.weight", "head.norm.bias", "head.proj.weight",
                                       "logit_scale.log_scale"}
    parent = torch.nn.ModuleDict({"text": frozen})
    parent.train()
    assert not frozen.trunk.training and frozen.head.training
    frozen.eval()


def _step_changes(plugin) -> set[str]:
    before = {n: p.detach().clone() for n, p in plugin.named_parameters()}
    opt = torch.optim.SGD([p for p in plugin.parameters() if p.requires_grad], lr=1.0)
    emb = plugin(plugin.load_batch(["a red cube", "a blue sphere", "a green cone"]))
    target = F.normalize(torch.randn(3, EMBED, generator=torch.Generator().manual_seed(0)), dim=-1)
    logits = plugin.logit_scale() * emb @ target.T
    F.cross_entropy(logits, torch.arange(3)).backward()
    opt.step()
    return {n for n, p in plugin.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_full_finetuning_trains_everything():
    plugin = create_plugin("text", embed_dim=EMBED, tuning="full")
    assert trainable_names(plugin) == {n for n, _ in plugin.named_parameters()}
    changed = _step_changes(plugin)
    assert any(n.startswith("trunk.") for n in changed)


def test_lora_trains_only_adapters_head_and_scale():
    plugin = create_plugin("text", embed_dim=EMBED, tuning="lora", lora_r=4)
    names = trainable_names(plugin)
    assert names and all("lora_" in n or n.startswith(("head.", "logit_scale.")) for n in names)
    assert any("lora_" in n for n in names)
    changed = _step_changes(plugin)
    assert changed <= names and any("lora_" in n for n in changed)


def test_local_folder_backbone(tmp_path: Path):
    folder = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    packaged = Path(resolve_backbone("packaged"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(packaged / name, folder / name)
    plugin = create_plugin("text", embed_dim=EMBED, backbone=str(folder))
    assert plugin.trunk_dim == 32
    assert plugin(plugin.load_batch(["hello world"])).shape == (1, EMBED)


def test_bad_inputs_name_the_input(frozen, tmp_path: Path):
    with pytest.raises(InputError, match="empty text"):
        frozen.load("   ")
    with pytest.raises(InputError, match="not UTF-8"):
        frozen.load(b"\xff\xfe\xfa")
    with pytest.raises(InputError, match=r"missing\.txt"):
        frozen.load(tmp_path / "missing.txt")
    assert frozen.load(b"  a caption \n") == "a caption"


def test_config_errors():
    with pytest.raises(ConfigError, match="tunning"):
        create_plugin("text", embed_dim=EMBED, tunning="full")
    with pytest.raises(ConfigError, match="tuning must be one of"):
        create_plugin("text", embed_dim=EMBED, tuning="half")
    with pytest.raises(ConfigError, match="could not be loaded"):
        create_plugin("text", embed_dim=EMBED, backbone="/no/such/folder-or-hub-name")
