"""anchorbind.losses.binding: InfoNCE against a brute-force reference, loss terms, masks, a real 2-process run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from anchorbind.errors import ConfigError
from anchorbind.losses.binding import BindingLoss, distributed_rank_world, gather_with_grad, info_nce
from anchorbind.losses.gap_regularizers import align_true_pairs, centroid_uniformity
from tests.conftest import REPO, free_port, subprocess_env


def unit(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def brute_force_info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss written out: explicit per-row softmax, one row at a time, both directions."""
    n = a.shape[0]
    total = scale * 0.0
    for queries, keys in ((a, b), (b, a)):
        for i in range(n):
            logits = [scale * torch.dot(queries[i], keys[j]) for j in range(n)]
            denominator = sum(torch.exp(z) for z in logits)
            total = total - torch.log(torch.exp(logits[i]) / denominator)
    return total / (2 * n)


# --------------------------------------------------------------------------- info_nce
def test_info_nce_matches_brute_force_value_and_gradients() -> None:
    a0, b0 = unit(7, 5, 0), unit(7, 5, 1)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    loss = info_nce(a, b, scale)
    loss.backward()
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    rscale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    ref = brute_force_info_nce(ra, rb, rscale)
    ref.backward()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(a.grad, ra.grad)
    torch.testing.assert_close(b.grad, rb.grad)
    torch.testing.assert_close(scale.grad, rscale.grad)


def test_info_nce_is_symmetric_and_uses_the_given_scale() -> None:
    a, b = unit(6, 4, 2), unit(6, 4, 3)
    for s in (1.0, 5.0, 100.0):
        scale = torch.tensor(s, dtype=torch.float64)
        torch.testing.assert_close(info_nce(a, b, scale), info_nce(b, a, scale))
        torch.testing.assert_close(info_nce(a, b, scale), brute_force_info_nce(a, b, scale))
    assert not torch.isclose(info_nce(a, b, 5.0), info_nce(a, b, 100.0))  # no hidden clamping
    # perfectly separable pairs: the loss goes to 0 as the scale grows
    eye = torch.eye(4, dtype=torch.float64)
    assert info_nce(eye, eye, 100.0) < 1e-30 < info_nce(eye, eye, 1.0)


def test_info_nce_mask_equals_the_present_subset() -> None:
    a, b = unit(8, 5, 4), unit(8, 5, 5)
    a[1] = 0.0  # absent rows may hold anything, e.g. zeros
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    torch.testing.assert_close(info_nce(a, b, 7.0, mask=mask), brute_force_info_nce(a[mask], b[mask], 7.0))


def test_info_nce_with_no_present_row_is_zero_and_differentiable() -> None:
    a, b = unit(4, 3, 6).requires_grad_(), unit(4, 3, 7).requires_grad_()
    loss = info_nce(a, b, 10.0, mask=torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(a.grad, torch.zeros_like(a)) and torch.equal(b.grad, torch.zeros_like(b))


def test_info_nce_rejects_bad_shapes_and_masks() -> None:
    with pytest.raises(ValueError, match="one shape"):
        info_nce(unit(4, 3, 0), unit(5, 3, 1), 1.0)
    with pytest.raises(ValueError, match="mask must be bool"):
        info_nce(unit(4, 3, 0), unit(4, 3, 1), 1.0, mask=torch.ones(4))
    with pytest.raises(ValueError, match="scalar"):
        info_nce(unit(4, 3, 0), unit(4, 3, 1), torch.ones(2))


def test_gather_is_identity_without_a_process_group() -> None:
    x = unit(3, 2, 0)
    assert distributed_rank_world() == (0, 1)
    assert gather_with_grad(x) is x


# --------------------------------------------------------------------------- BindingLoss
def batch(n: int = 8, d: int = 5) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    embeddings = {"image": unit(n, d, 10), "text": unit(n, d, 11), "audio": unit(n, d, 12)}
    scales = {
        "text": torch.tensor(14.0, dtype=torch.float64),
        "audio": torch.tensor(5.0, dtype=torch.float64),
    }
    return embeddings, scales


def test_terms_are_named_and_plugins_are_never_contrasted_with_each_other() -> None:
    embeddings, scales = batch()
    terms = BindingLoss({"text": 1.0, "audio": 1.0})(embeddings, scales)
    assert set(terms) == {"loss", "contrastive/text", "contrastive/audio"}
    torch.testing.assert_close(
        terms["contrastive/text"], info_nce(embeddings["image"], embeddings["text"], 14.0)
    )
    torch.testing.assert_close(
        terms["contrastive/audio"], info_nce(embeddings["image"], embeddings["audio"], 5.0)
    )
    torch.testing.assert_close(terms["loss"], terms["contrastive/text"] + terms["contrastive/audio"])
    # the text/audio similarity does not enter the loss at all without a direct pair
    text = embeddings["text"].clone().requires_grad_()
    audio = embeddings["audio"].clone().requires_grad_()
    loss = BindingLoss()({"image": embeddings["image"], "text": text, "audio": audio}, scales)["loss"]
    (grad_text,) = torch.autograd.grad(loss, text)
    expected = torch.autograd.grad(info_nce(embeddings["image"], text, 14.0), text)[0]
    torch.testing.assert_close(grad_text, expected)


def test_direct_pairs_weights_and_regularisers_enter_the_total() -> None:
    embeddings, scales = batch()
    loss_fn = BindingLoss(
        {"text": 2.0, "audio": 0.5},
        direct_pairs=[("audio", "text")],
        gap={"atp": 0.3, "centroid_uniformity": 0.7},
    )
    terms = loss_fn(embeddings, scales)
    assert set(terms) == {
        "loss",
        "contrastive/text",
        "contrastive/audio",
        "direct/audio-text",
        "reg/atp",
        "reg/centroid_uniformity",
    }
    # the direct term uses the first modality's scale
    torch.testing.assert_close(
        terms["direct/audio-text"], info_nce(embeddings["audio"], embeddings["text"], 5.0)
    )
    torch.testing.assert_close(terms["reg/atp"], align_true_pairs(embeddings))
    torch.testing.assert_close(terms["reg/centroid_uniformity"], centroid_uniformity(embeddings))
    expected = (
        2.0 * terms["contrastive/text"]
        + 0.5 * terms["contrastive/audio"]
        + terms["direct/audio-text"]
        + 0.3 * terms["reg/atp"]
        + 0.7 * terms["reg/centroid_uniformity"]
    )
    torch.testing.assert_close(terms["loss"], expected)


def test_masks_give_the_loss_of_the_present_subset() -> None:
    embeddings, scales = batch()
    masks = {
        "image": torch.tensor([1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool),
        "text": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
        "audio": torch.tensor([0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool),
    }
    for name, mask in masks.items():  # absent rows hold zeros, as BindModel.forward writes them
        embeddings[name] = embeddings[name] * mask[:, None]
    terms = BindingLoss(gap={"align": 1.0})(embeddings, scales, masks)
    for m, scale in (("text", 14.0), ("audio", 5.0)):
        rows = masks["image"] & masks[m]
        subset = brute_force_info_nce(embeddings["image"][rows], embeddings[m][rows], torch.tensor(scale))
        torch.testing.assert_close(terms[f"contrastive/{m}"], subset.to(torch.float64))
    align = [
        (embeddings[m] - embeddings["image"])[masks["image"] & masks[m]].pow(2).sum(-1).mean()
        for m in ("audio", "text")
    ]
    torch.testing.assert_close(terms["reg/align"], torch.stack(align).mean())


def test_a_modality_with_no_present_row_contributes_zero_and_keeps_gradients_finite() -> None:
    embeddings, scales = batch()
    audio = torch.zeros_like(embeddings["audio"], requires_grad=True)
    masks = {"audio": torch.zeros(8, dtype=torch.bool)}
    loss_fn = BindingLoss(
        direct_pairs=[("text", "audio")],
        gap={k: 1.0 for k in ("align", "uniformity_in", "uniformity_cross", "atp", "centroid_uniformity")},
    )
    terms = loss_fn({**embeddings, "audio": audio}, scales, masks)
    assert terms["contrastive/audio"].item() == 0.0 and terms["direct/text-audio"].item() == 0.0
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and torch.equal(audio.grad, torch.zeros_like(audio))


def test_a_known_modality_missing_from_the_batch_is_present_nowhere() -> None:
    embeddings, scales = batch()
    del embeddings["audio"]
    terms = BindingLoss({"text": 1.0, "audio": 1.0})(embeddings, scales)
    assert terms["contrastive/audio"].item() == 0.0
    torch.testing.assert_close(terms["loss"], terms["contrastive/text"])


def test_float32_inputs_stay_float32() -> None:
    embeddings, scales = batch()
    terms = BindingLoss()(
        {k: v.float() for k, v in embeddings.items()}, {k: v.float() for k, v in scales.items()}
    )
    assert terms["loss"].dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": {"txt": 1.0}, "modalities": ["text"]}, "unknown modality 'txt'"),
        ({"weights": {"image": 1.0}}, "anchor"),
        ({"weights": {"text": -1.0}}, ">= 0"),
        ({"weights": {"text": float("nan")}}, "finite"),
        ({"weights": {"text": 1.0}, "direct_pairs": [("text", "depth")]}, "unknown modality"),
        ({"direct_pairs": [("text", "image")]}, "anchor"),
        ({"direct_pairs": [("text", "text")]}, "two different"),
        ({"direct_pairs": [("text", "audio"), ("audio", "text")]}, "twice"),
        ({"modalities": ["image", "text"]}, "anchor"),
        ({"gap": {"atpp": 1.0}}, "unknown config key"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BindingLoss(**kwargs)


def test_inputs_that_disagree_with_the_config_are_refused() -> None:
    embeddings, scales = batch()
    with pytest.raises(ConfigError, match="does not know"):
        BindingLoss({"text": 1.0})(embeddings, scales)
    with pytest.raises(ConfigError, match="'depth', absent"):
        BindingLoss(direct_pairs=[("text", "depth")])(embeddings, scales)
    with pytest.raises(ValueError, match="no logit scale for 'audio'"):
        BindingLoss()(embeddings, {"text": scales["text"]})
    with pytest.raises(ValueError, match="must include the anchor"):
        BindingLoss()({"text": embeddings["text"]}, scales)
    with pytest.raises(ValueError, match="mask of 'text' must be bool"):
        BindingLoss()(embeddings, scales, {"text": torch.ones(8)})
    with pytest.raises(ValueError, match="rows must be aligned"):
        BindingLoss()({**embeddings, "text": embeddings["text"][:4]}, scales)


# --------------------------------------------------------------------------- real 2-process run
@pytest.mark.distributed
def test_two_processes_equal_one_process_with_the_global_batch() -> None:
    """tests/dist_loss_check.py under accelerate: loss terms and DDP-averaged gradients match."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "tests" / "dist_loss_check.py"),
    ]
    env = subprocess_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert output.count(": ok") == 2 * 14 and "FAIL" not in output, output[-6000:]
    assert "gloo" in output


def test_autocast_does_not_lower_the_loss_precision() -> None:
    embeddings, scales = batch()
    embeddings = {k: v.float() for k, v in embeddings.items()}
    scales = {k: v.float() for k, v in scales.items()}
    loss_fn = BindingLoss(gap={"atp": 1.0, "centroid_uniformity": 1.0})
    full = loss_fn(embeddings, scales)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_fn(embeddings, scales)
    for name, value in full.items():
        torch.testing.assert_close(mixed[name], value)


def test_nan_in_absent_rows_does_not_leak_into_the_loss_or_gradients() -> None:
    embeddings, scales = batch()
    text = embeddings["text"].clone()
    text[3] = float("nan")
    text.requires_grad_()
    masks = {"text": torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)}
    gap = {k: 1.0 for k in ("align", "uniformity_in", "uniformity_cross", "atp", "centroid_uniformity")}
    terms = BindingLoss(direct_pairs=[("text", "audio")], gap=gap)(
        {**embeddings, "text": text}, scales, masks
    )
    terms["loss"].backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(text.grad).all() and torch.equal(text.grad[3], torch.zeros(5, dtype=torch.float64))
    plain = info_nce(embeddings["image"], text, 14.0, mask=masks["text"])
    keep = masks["text"]
    torch.testing.assert_close(plain, brute_force_info_nce(embeddings["image"][keep], text[keep], 14.0))
