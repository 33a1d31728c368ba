"""anchorbind.losses.gap_regularizers: each formula against a brute-force loop; short trainings show its effect."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from anchorbind.config import from_dict
from anchorbind.errors import ConfigError
from anchorbind.losses.binding import BindingLoss
from anchorbind.losses.gap_regularizers import (
    GapRegularizerConfig,
    align_true_pairs,
    alignment,
    anchored_pair_terms,
    centroid_uniformity,
    cross_uniformity,
    gap_regularizer_terms,
    in_modal_uniformity,
    uniformity,
)


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)


def sqdist(u: torch.Tensor, v: torch.Tensor) -> float:
    return sum((float(p) - float(q)) ** 2 for p, q in zip(u, v, strict=True))


def loop_uniformity(x: torch.Tensor, y: torch.Tensor, rows: list[int], t: float = 2.0) -> float:
    """log mean_{i != j} exp(-t ||x_i - y_j||^2) over ``rows``, one pair at a time."""
    values = [math.exp(-t * sqdist(x[i], y[j])) for i in rows for j in rows if i != j]
    return math.log(sum(values) / len(values))


MASK = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
PRESENT = [i for i, keep in enumerate(MASK.tolist()) if keep]


# --------------------------------------------------------------------------- formulas
def test_uniformity_matches_the_loop_and_wang_isola_pdist_form() -> None:
    x = unit(9, 4, 0)
    assert uniformity(x).item() == pytest.approx(loop_uniformity(x, x, list(range(9))), rel=1e-12)
    assert uniformity(x, MASK, t=3.0).item() == pytest.approx(
        loop_uniformity(x, x, PRESENT, t=3.0), rel=1e-12
    )
    # the reference implementation from Wang & Isola 2020 (mean over i < j)
    wang_isola = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()
    torch.testing.assert_close(uniformity(x), wang_isola)


def test_cross_uniformity_matches_the_loop_and_is_symmetric() -> None:
    x, y = unit(9, 4, 1), unit(9, 4, 2)
    assert cross_uniformity(x, y).item() == pytest.approx(loop_uniformity(x, y, list(range(9))), rel=1e-12)
    assert cross_uniformity(x, y, MASK).item() == pytest.approx(loop_uniformity(x, y, PRESENT), rel=1e-12)
    torch.testing.assert_close(cross_uniformity(x, y), cross_uniformity(y, x))


def test_alignment_matches_the_loop() -> None:
    x, y = unit(9, 4, 3), unit(9, 4, 4)
    for alpha in (2.0, 1.0, 3.0):
        expected = sum(sqdist(x[i], y[i]) ** (alpha / 2) for i in PRESENT) / len(PRESENT)
        assert alignment(x, y, MASK, alpha=alpha).item() == pytest.approx(expected, rel=1e-10)


def three_modalities() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    embeddings = {"image": unit(6, 4, 5), "text": unit(6, 4, 6), "audio": unit(6, 4, 7)}
    masks = {
        "image": torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool),
        "text": torch.tensor([1, 0, 1, 1, 1, 0], dtype=torch.bool),
        "audio": torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.bool),
    }
    return embeddings, masks


def test_align_true_pairs_matches_the_loop_over_samples_and_modality_pairs() -> None:
    embeddings, masks = three_modalities()
    distances = [
        sqdist(embeddings[p][i], embeddings[q][i])
        for i in range(6)
        for p, q in itertools.combinations(embeddings, 2)
        if masks[p][i] and masks[q][i]
    ]
    assert len(distances) == 7  # (0: i-t) (1: i-a) (2: i-t, i-a, t-a) (3: i-t) (4: t-a)
    assert align_true_pairs(embeddings, masks).item() == pytest.approx(sum(distances) / 7, rel=1e-12)
    # two modalities, no masks: exactly the alignment loss (ModGap's lalign_loss)
    pair = {"image": embeddings["image"], "text": embeddings["text"]}
    torch.testing.assert_close(align_true_pairs(pair), alignment(pair["image"], pair["text"]))


def test_centroid_uniformity_matches_the_loop() -> None:
    embeddings, masks = three_modalities()
    centroids = []
    for i in range(6):
        members = [embeddings[m][i] for m in embeddings if masks[m][i]]
        if len(members) >= 2:
            mean = sum(members) / len(members)
            centroids.append(mean / mean.norm())
    stacked = torch.stack(centroids)
    assert len(centroids) == 5  # sample 5 has the image only
    expected = loop_uniformity(stacked, stacked, list(range(5)))
    assert centroid_uniformity(embeddings, masks).item() == pytest.approx(expected, rel=1e-12)
    # two modalities: ModGap's lunif_loss(F.normalize((x + y) / 2))
    x, y = embeddings["image"], embeddings["text"]
    modgap = torch.pdist(F.normalize((x + y) / 2, dim=-1)).pow(2).mul(-2).exp().mean().log()
    torch.testing.assert_close(centroid_uniformity({"image": x, "text": y}), modgap)


def test_n_modal_means_skip_modalities_absent_from_the_batch() -> None:
    embeddings, masks = three_modalities()
    masks["audio"] = torch.zeros(6, dtype=torch.bool)
    text_rows = masks["image"] & masks["text"]
    kwargs = {"anchor": "image", "modalities": ["text", "audio"]}
    torch.testing.assert_close(
        anchored_pair_terms(embeddings, masks, term="align", **kwargs),
        alignment(embeddings["text"], embeddings["image"], text_rows),
    )
    torch.testing.assert_close(
        anchored_pair_terms(embeddings, masks, term="uniformity_cross", **kwargs),
        cross_uniformity(embeddings["image"], embeddings["text"], text_rows),
    )
    torch.testing.assert_close(
        in_modal_uniformity(embeddings, masks, modalities=["text", "audio"]),
        uniformity(embeddings["text"], masks["text"]),
    )


def test_undefined_terms_are_zero_with_finite_gradients() -> None:
    x = unit(4, 3, 8).requires_grad_()
    one_row = torch.tensor([0, 1, 0, 0], dtype=torch.bool)
    none = torch.zeros(4, dtype=torch.bool)
    values = [
        uniformity(x, one_row),
        cross_uniformity(x, x.flip(0), one_row),
        alignment(x, x.flip(0), none),
        align_true_pairs({"a": x, "b": x.flip(0)}, {"a": one_row, "b": ~one_row}),
        centroid_uniformity({"a": x, "b": x.flip(0)}, {"a": one_row, "b": ~one_row}),
    ]
    assert [v.item() for v in values] == [0.0] * 5
    (grad,) = torch.autograd.grad(sum(values), x)
    assert torch.equal(grad, torch.zeros_like(x))
    # coincident points (zero distance) have a finite uniformity gradient, unlike pdist's
    same = unit(1, 3, 9).repeat(3, 1).requires_grad_()
    (grad,) = torch.autograd.grad(uniformity(same), same)
    assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------- config
def test_config_defaults_off_and_refuses_bad_values() -> None:
    assert GapRegularizerConfig().enabled == {}
    config = from_dict(GapRegularizerConfig, {"atp": 1, "centroid_uniformity": 0.5})
    assert config.enabled == {"atp": 1.0, "centroid_uniformity": 0.5}
    with pytest.raises(ConfigError, match="unknown config key"):
        GapRegularizerConfig.build({"cu": 1.0})
    with pytest.raises(ConfigError, match=">= 0"):
        GapRegularizerConfig(align=-0.1)
    with pytest.raises(ConfigError, match="> 0"):
        GapRegularizerConfig(uniformity_t=0.0)
    with pytest.raises(ConfigError, match="finite"):
        GapRegularizerConfig(atp=float("inf"))


def test_gap_regularizer_terms_returns_the_enabled_terms_unweighted() -> None:
    embeddings, masks = three_modalities()
    config = GapRegularizerConfig(align=5.0, uniformity_in=1.0, atp=2.0)
    terms = gap_regularizer_terms(config, embeddings, masks, anchor="image", modalities=["text", "audio"])
    assert list(terms) == ["align", "uniformity_in", "atp"]
    torch.testing.assert_close(terms["atp"], align_true_pairs(embeddings, masks))


# --------------------------------------------------------------------------- effect on training
N, DIM = 32, 8


def two_cones() -> tuple[torch.Tensor, torch.Tensor]:
    """Images and texts in two separate narrow cones: a modality gap at initialisation."""
    gen = torch.Generator().manual_seed(0)
    image_axis, text_axis = F.normalize(torch.randn(2, DIM, generator=gen), dim=-1)
    image = F.normalize(0.5 * torch.randn(N, DIM, generator=gen) + 2 * image_axis, dim=-1)
    text = F.normalize(0.5 * torch.randn(N, DIM, generator=gen) + 2 * text_axis, dim=-1)
    return image, text


def train(gap: dict[str, float] | None, *, anchor_frozen: bool, steps: int = 100) -> dict[str, float]:
    """Adam on free embeddings with BindingLoss (InfoNCE + ``gap``), from the same initialisation."""
    image0, text0 = two_cones()
    image = image0.clone().requires_grad_(not anchor_frozen)
    text = text0.clone().requires_grad_()
    optimizer = torch.optim.Adam([text] if anchor_frozen else [text, image], lr=0.05)
    loss_fn = BindingLoss({"text": 1.0}, gap=gap)
    scale = torch.tensor(1 / 0.07)
    for _ in range(steps):
        terms = loss_fn(
            {"image": F.normalize(image, dim=-1), "text": F.normalize(text, dim=-1)}, {"text": scale}
        )
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        x, y = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return {
            "gap": (x.mean(0) - y.mean(0)).norm().item(),  # distance between the modality centroids
            "pair_distance": (x - y).pow(2).sum(-1).mean().item(),
            "centroid_uniformity": centroid_uniformity({"image": x, "text": y}).item(),
            "retrieval": ((x @ y.T).argmax(1) == torch.arange(N)).float().mean().item(),
        }


def test_fahim_alignment_and_uniformity_close_the_gap_that_infonce_leaves() -> None:
    start = train(None, anchor_frozen=False, steps=0)
    infonce = train(None, anchor_frozen=False)
    cuaxu = train({"align": 1.0, "uniformity_in": 1.0, "uniformity_cross": 1.0}, anchor_frozen=False)
    assert infonce["gap"] < start["gap"]
    assert cuaxu["gap"] < 0.7 * infonce["gap"]
    assert cuaxu["retrieval"] == infonce["retrieval"] == 1.0


def test_with_a_frozen_anchor_alignment_closes_the_gap_but_uniformity_alone_widens_it() -> None:
    """The anchor cannot spread, so repulsion only pushes the plug-in modality out of its cone."""
    infonce = train(None, anchor_frozen=True)
    assert train({"align": 1.0}, anchor_frozen=True)["gap"] < 0.5 * infonce["gap"]
    assert train({"uniformity_cross": 1.0}, anchor_frozen=True)["gap"] > infonce["gap"]


def test_atp_lowers_the_true_pair_distance() -> None:
    for frozen in (True, False):
        infonce = train(None, anchor_frozen=frozen)
        atp = train({"atp": 1.0}, anchor_frozen=frozen)
        assert atp["pair_distance"] < 0.5 * infonce["pair_distance"]
        assert atp["retrieval"] == 1.0


def test_centroid_uniformity_spreads_the_centroids() -> None:
    for frozen in (True, False):
        start = train(None, anchor_frozen=frozen, steps=0)
        infonce = train(None, anchor_frozen=frozen)
        cu = train({"centroid_uniformity": 1.0}, anchor_frozen=frozen)
        assert cu["centroid_uniformity"] < infonce["centroid_uniformity"] < start["centroid_uniformity"]
