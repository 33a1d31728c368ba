"""Importing ImageBind: every branch equals ImageBind's own computation; the full-size mapping is complete.

The fixture (``tests/fixtures/imagebind_reduced.json``) was made by running ImageBind's code
(``tests/fixtures/make_imagebind_fixture.py``) on a reduced-size model with the seeded random
weights of ``tests/imagebind_utils.py``; it holds the tensor names and shapes, the token ids of
ImageBind's tokenizer and the unit embeddings ImageBind computed. No ImageBind code runs here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from anchorbind import BindModel
from anchorbind.errors import ModelFileError
from anchorbind.pipelines.imagebind import BRANCHES, TO_ANCHORBIND, from_imagebind, plan_import
from anchorbind.pipelines.imagebind.convert import imagebind_configs, produce_tensors
from tests.imagebind_utils import FIXTURE, fixed_inputs, random_state
from tests.test_cli_errors import anchorbind, assert_one_line_error
from tests.train_utils import tiny_config, write_config

FIXTURES = Path(__file__).parent / "fixtures"
HUGE_KEYS = FIXTURES / "imagebind_huge_keys.json"
"""Every tensor name and shape of imagebind_huge.pth (read from ImageBind's model on the meta device; no weights)."""
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads((FIXTURES / FIXTURE).read_text())


@pytest.fixture(scope="module")
def reduced_state(fixture) -> dict[str, torch.Tensor]:
    return random_state(fixture["shapes"], fixture["seed"])


@pytest.fixture(scope="module")
def imported(tmp_path_factory, reduced_state) -> Path:
    out = tmp_path_factory.mktemp("imagebind") / "model"
    from_imagebind(reduced_state, out)
    return out


def test_every_branch_equals_imagebind(imported, fixture):
    model = BindModel.from_pretrained(imported).eval()
    assert set(model.modalities) == set(TO_ANCHORBIND.values())
    inputs = fixed_inputs(fixture["seed"])
    inputs["text"] = {"input_ids": torch.tensor(fixture["token_ids"])}
    with torch.inference_mode():
        for branch in BRANCHES:
            ours = model.encode(TO_ANCHORBIND[branch], inputs[branch])
            reference = torch.tensor(fixture["embeddings"][branch])
            assert ours.shape == reference.shape == (len(inputs[branch]["input_ids"]) if branch == "text"
                                                     else 2, model.embed_dim)
            difference = (ours - reference).abs().max().item()
            assert difference <= TOLERANCE, f"{branch}: max |ours - ImageBind| = {difference:.2e}"


def test_clip_tokenizer_gives_imagebinds_token_ids(imported, fixture):
    processor = BindModel.from_pretrained(imported).processor("text")
    ids = processor.load_batch(fixture["texts"])["input_ids"]
    assert ids.shape == (len(fixture["texts"]), 77)
    assert torch.equal(ids, torch.tensor(fixture["token_ids"]))


def test_vision_conv3d_over_two_repeated_frames_equals_summed_conv2d():
    """ImageBind's vision stem is a Conv3d over the image repeated as 2 frames (kernel 2x14x14);
    the anchor's timm Conv2d gets the two temporal kernel slices summed."""
    generator = torch.Generator().manual_seed(0)  # float64: the two differ only by summation order
    weight = torch.randn(8, 3, 2, 14, 14, generator=generator, dtype=torch.float64)
    image = torch.randn(2, 3, 56, 56, generator=generator, dtype=torch.float64)
    video = image.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    three_d = F.conv3d(video, weight, stride=(2, 14, 14)).squeeze(2)
    two_d = F.conv2d(image, weight.sum(dim=2), stride=14)
    torch.testing.assert_close(two_d, three_d, rtol=0, atol=1e-10)


def test_full_size_checkpoint_maps_completely_on_the_meta_device():
    shapes = {key: tuple(shape) for key, shape in json.loads(HUGE_KEYS.read_text()).items()}
    assert len(shapes) == 1311
    plan = plan_import(shapes)
    sizes = plan.sizes
    assert (sizes["vision"].width, sizes["vision"].depth, sizes["vision"].num_heads) == (1280, 32, 16)
    assert (sizes["text"].width, sizes["text"].depth, sizes["text"].num_heads) == (1024, 24, 16)
    assert (sizes["audio"].width, sizes["audio"].depth, sizes["audio"].num_heads) == (768, 12, 12)
    assert (sizes["depth"].width, sizes["depth"].num_heads) == (384, 8)
    assert (sizes["thermal"].width, sizes["imu"].width, sizes["imu"].depth) == (768, 512, 6)
    assert plan.out_dim == 1024 and sizes["vision"].extra["image_size"] == 224
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    configs = imagebind_configs(plan, anchor_weights="anchor.safetensors", text_backbone="text")
    tensors = produce_tensors(state, plan, configs)  # raises on any missing, unexpected or mis-shaped tensor
    read = {source for rule in plan.rules for source in rule.sources} | set(plan.checked_only)
    assert read == set(shapes), "every checkpoint tensor is read"
    parameters = {prefix: sum(math.prod(v.shape) for k, v in tensors.items() if k.startswith(prefix))
                  for prefix in ("anchor:", "text_backbone:", "plugin:audio:", "plugin:depth:", "plugin:thermal:",
                                 "plugin:imu:")}
    assert round(parameters["anchor:"] / 1e6) == 632  # ViT-H/14 with its projection (ImageBind: 633 M with Conv3d)
    assert round(parameters["plugin:audio:"] / 1e6) == 86 and round(parameters["plugin:imu:"] / 1e6) == 20


def test_unknown_missing_and_mis_shaped_tensors_are_listed(reduced_state):
    extra = {**reduced_state, "modality_heads.lidar.0.weight": torch.zeros(3), "stray.weight": torch.zeros(1)}
    with pytest.raises(ModelFileError, match=r"no ImageBind branch \(2\).*lidar.*stray\.weight"):
        from_imagebind(extra)
    missing = {k: v for k, v in reduced_state.items() if not k.startswith("modality_trunks.audio.blocks.1.attn")}
    with pytest.raises(ModelFileError, match=r"missing tensors.*audio\.blocks\.1\.attn\.bias_k"):
        from_imagebind(missing)
    wrong = dict(reduced_state)
    wrong["modality_heads.depth.2.weight"] = torch.zeros(64, 95)
    with pytest.raises(ModelFileError, match=r"mis-shaped.*plugin:depth:head\.proj\.weight"):
        from_imagebind(wrong)


def test_heads_that_cannot_be_inferred_must_be_given(reduced_state):
    shapes = {k: tuple(v.shape) for k, v in reduced_state.items()}
    odd_width = {k: ((100,) if k == "modality_trunks.vision.blocks.0.norm_1.weight" else s) for k, s in shapes.items()}
    with pytest.raises(ModelFileError, match=r"--heads vision=N"):
        plan_import(odd_width)
    assert plan_import(shapes, heads={"audio": 4}).sizes["audio"].num_heads == 4


def test_cli_imports_chosen_branches_and_errors_in_one_line(tmp_path, reduced_state):
    checkpoint = tmp_path / "imagebind_reduced.pth"
    torch.save(reduced_state, checkpoint)
    done = anchorbind("import-imagebind", str(checkpoint), "--out", str(tmp_path / "ib"), "--modalities", "text",
                      "audio", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "vision -> image, text -> text, audio -> audio" in done.stdout
    assert "CC-BY-NC" in done.stderr
    model = BindModel.from_pretrained(tmp_path / "ib")
    assert set(model.modalities) == {"image", "text", "audio"}
    card = (tmp_path / "ib" / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card
    moved = tmp_path / "moved"
    (tmp_path / "ib").rename(moved)  # the folder is self-contained: anchor and text tower live in deps/
    assert set(BindModel.from_pretrained(moved).modalities) == {"image", "text", "audio"}
    safetensors = tmp_path / "reduced.safetensors"
    save_file(reduced_state, str(safetensors))
    assert anchorbind("import-imagebind", str(safetensors), "--out", str(tmp_path / "st"), "--modalities", "imu",
                      cwd=tmp_path).returncode == 0
    assert_one_line_error(anchorbind("import-imagebind", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x"),
                                     cwd=tmp_path), 1, "none.pth", "no such checkpoint")
    (tmp_path / "pickle.pth").write_bytes(b"\x80\x04\x95not a real pickle")
    assert_one_line_error(anchorbind("import-imagebind", str(tmp_path / "pickle.pth"), "--out", str(tmp_path / "y"),
                                     cwd=tmp_path), 1, "pickle.pth", "not a readable checkpoint")
    assert_one_line_error(anchorbind("import-imagebind", str(checkpoint), "--out", str(tmp_path / "z"),
                                     "--modalities", "lidar", cwd=tmp_path), 2, "lidar")


@pytest.mark.slow
def test_lora_finetuning_of_an_imported_model_trains_two_steps_and_saves(tmp_path, imported, world_dir, fixture):
    cfg = tiny_config(tmp_path / "run", world_dir / "train", steps=2, checkpoint_every=2)
    cfg["model"] = {"init_from": str(imported),
                    "modalities": {"audio": {"tuning": "lora", "lora_r": 4},
                                   "depth": {"tuning": "lora", "lora_r": 4},
                                   "thermal": None, "imu": None}}
    done = anchorbind("train", "--config", str(write_config(tmp_path / "ft.yaml", cfg)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = tmp_path / "run" / "model"
    assert (saved / "config.json").is_file(), sorted(p.name for p in (tmp_path / "run").iterdir())
    model = BindModel.from_pretrained(saved).eval()
    assert set(model.modalities) == {"image", "text", "audio", "depth"}
    audio = model.plugin("audio")
    trainable = {n for n, p in audio.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("head.",)) for n in trainable), sorted(trainable)[:5]
    base = BindModel.from_pretrained(imported).eval()
    with torch.no_grad():  # the frozen base weights came through; the adapters moved
        torch.testing.assert_close(audio.trunk.blocks[0].attn.qkv.base_layer.weight,
                                   base.plugin("audio").trunk.blocks[0].attn.qkv.weight)
        assert any(p.abs().sum() > 0 for n, p in audio.named_parameters() if "lora_B" in n)
    inputs = fixed_inputs(fixture["seed"])
    with torch.inference_mode():
        torch.testing.assert_close(model.encode("image", inputs["vision"]), base.encode("image", inputs["vision"]))


def test_packaged_lora_config_builds_on_an_imported_model(imported):
    import yaml

    from anchorbind.config import packaged_config

    model_section = yaml.safe_load(packaged_config("imagebind_lora").read_text())["model"]
    model_section["init_from"] = str(imported)
    model = BindModel.from_config(model_section)
    assert set(model.modalities) == {"image", "text", "audio", "depth"}
    for name in ("audio", "depth"):
        trainable = [n for n, p in model.plugin(name).trunk.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"qkv", "proj", "fc1", "fc2"}
    assert not any(p.requires_grad for p in model.plugin("text").trunk.parameters())


@pytest.mark.slow
def test_eval_runs_anchorbinds_analyses_on_an_imported_model(tmp_path, imported, world_dir):
    run = tmp_path / "ib-eval"
    done = anchorbind("eval", str(run), "--model", str(imported), "--shards", str(world_dir / "test"),
                      "--max-samples", "0", "--num-workers", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["retrieval"]["text->audio"]["kind"] == "emergent"  # never trained on each other: through the anchor
    assert {"audio", "depth"} <= set(metrics["visiocentrism"]["probes"])
    assert any("thermal" in note for note in metrics["notes"])  # in the model, not in these shards: said, not hidden
    assert (run / "model" / "deps" / "anchor.safetensors").stat().st_ino == (
        imported / "deps" / "anchor.safetensors").stat().st_ino  # the 2.5 GB anchor is linked, not copied
