"""Distributed equality check for ``anchorbind.losses.binding``: 2 processes x B samples == 1 process x 2B samples.

Run by ``tests/test_loss.py`` (``@pytest.mark.distributed``) as::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no --main_process_port PORT tests/dist_loss_check.py

Each process builds the same tiny deterministic model (two linear encoders, a learnable and a fixed
logit scale, a fixed "image" anchor), wraps it in real ``DistributedDataParallel`` (which averages
gradients over processes), computes :class:`anchorbind.losses.binding.BindingLoss` with gathering on its half of
a fixed global batch and backpropagates. Every process also computes, without any collective, the
single-process loss and gradients on the whole batch. The check fails (exit status 1) if any loss
term (averaged over processes, and per process when ``local_loss`` is off) or any parameter
gradient differs by more than ``TOLERANCE``. Cases cover ``local_loss`` off/on, masks (including a
process with no row of a modality, a modality present nowhere, and a modality missing from one
process's embeddings), a direct pair and every gap regulariser.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from anchorbind.heads import LogitScale
from anchorbind.losses.binding import BindingLoss, info_nce

TOLERANCE = 1e-5
LOCAL_BATCH = 4
WORLD = 2
IN_DIM, EMBED_DIM = 5, 6
GAP = {"align": 0.3, "uniformity_in": 0.2, "uniformity_cross": 0.1, "atp": 0.4, "centroid_uniformity": 0.25}


class TinyBind(nn.Module):
    """Two linear 'plug-in' encoders and their logit scales, like BindModel's forward output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.text = nn.Linear(IN_DIM, EMBED_DIM)
        self.audio = nn.Linear(IN_DIM, EMBED_DIM)
        self.text_scale = LogitScale(10.0, learnable=True)
        self.audio_scale = LogitScale(5.0, learnable=False)

    def forward(self, text: torch.Tensor, audio: torch.Tensor | None) -> dict[str, dict[str, torch.Tensor]]:
        embeddings = {"text": F.normalize(self.text(text), dim=-1)}
        if audio is not None:  # a batch without audio skips the encoder, as BindModel does
            embeddings["audio"] = F.normalize(self.audio(audio), dim=-1)
        scales = {"text": self.text_scale(), "audio": self.audio_scale()}
        return {"embeddings": embeddings, "logit_scales": scales}


@dataclass
class Case:
    name: str
    local_loss: bool
    masks: str  # none | mixed | empty_on_rank1 | empty_everywhere | absent_on_rank1
    gap: bool = True
    direct: bool = True
    functional: bool = False  # anchorbind.losses.binding.info_nce per modality instead of BindingLoss


CASES = [
    Case(f"{kind}/local_loss={local}", local, kind)
    for local in (False, True)
    for kind in ("none", "mixed", "empty_on_rank1", "empty_everywhere", "absent_on_rank1")
] + [
    Case("plain/local_loss=False", False, "none", gap=False, direct=False),
    Case("plain/local_loss=True", True, "none", gap=False, direct=False),
    Case("info_nce/mixed/local_loss=False", False, "mixed", functional=True),
    Case("info_nce/mixed/local_loss=True", True, "mixed", functional=True),
]


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    n = LOCAL_BATCH * WORLD
    return {
        "text": torch.randn(n, IN_DIM, generator=gen),
        "audio": torch.randn(n, IN_DIM, generator=gen),
        "image": F.normalize(torch.randn(n, EMBED_DIM, generator=gen), dim=-1),
    }


def global_masks(kind: str) -> dict[str, torch.Tensor] | None:
    n = LOCAL_BATCH * WORLD
    if kind == "none":
        return None
    ones = torch.ones(n, dtype=torch.bool)
    text, audio, image = ones.clone(), ones.clone(), ones.clone()
    if kind == "mixed":
        text = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
        audio = torch.tensor([0, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
        image[6] = False
    elif kind in ("empty_on_rank1", "absent_on_rank1"):
        audio[LOCAL_BATCH:] = False  # rank 1 holds no audio row
        text[2] = False
    elif kind == "empty_everywhere":
        audio[:] = False
    return {"text": text, "audio": audio, "image": image}


def make_loss(case: Case, *, gather: bool) -> Callable[..., dict[str, torch.Tensor]]:
    if case.functional:
        return partial(functional_loss, local_loss=case.local_loss, gather=gather)
    return BindingLoss(
        weights={"text": 1.0, "audio": 0.5},
        direct_pairs=[("text", "audio")] if case.direct else (),
        local_loss=case.local_loss,
        gap=GAP if case.gap else None,
        gather=gather,
    )


def functional_loss(
    embeddings: Mapping[str, torch.Tensor],
    scales: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    local_loss: bool,
    gather: bool,
) -> dict[str, torch.Tensor]:
    """``info_nce(image, m)`` for text and audio, called directly (each gathers on its own)."""
    terms = {
        m: info_nce(
            embeddings["image"],
            embeddings[m],
            scales[m],
            mask=masks["image"] & masks[m],
            local_loss=local_loss,
            gather=gather,
        )
        for m in ("text", "audio")
    }
    return {"loss": terms["text"] + terms["audio"], **terms}


def reference(case: Case) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Loss terms and parameter gradients of one process holding the whole global batch."""
    model = TinyBind()
    data = global_batch()
    out = model(data["text"], data["audio"])
    embeddings = {**out["embeddings"], "image": data["image"]}
    terms = make_loss(case, gather=False)(embeddings, out["logit_scales"], global_masks(case.masks))
    terms["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return {k: v.item() for k, v in terms.items()}, grads


def distributed(case: Case, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """This process's loss terms and its gradients after DDP's averaging."""
    model = TinyBind()
    ddp = DistributedDataParallel(model, find_unused_parameters=case.masks == "absent_on_rank1")
    data = global_batch()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    full_masks = global_masks(case.masks)
    masks = None if full_masks is None else {k: v[rows] for k, v in full_masks.items()}
    drop_audio = case.masks == "absent_on_rank1" and rank == 1
    out = ddp(data["text"][rows], None if drop_audio else data["audio"][rows])
    embeddings = {**out["embeddings"], "image": data["image"][rows]}
    if drop_audio:
        del masks["audio"]  # the loss knows 'audio' from its weights and treats it as present nowhere
    terms = make_loss(case, gather=True)(embeddings, out["logit_scales"], masks)
    terms["loss"].backward()
    grads = {n.removeprefix("module."): p.grad.detach().clone() for n, p in ddp.named_parameters()}
    return {k: v.detach() for k, v in terms.items()}, grads


def max_diff(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    return (
        (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max().item()
    )


def compare(case: Case, rank: int, world: int) -> list[str]:
    ref_terms, ref_grads = reference(case)
    terms, grads = distributed(case, rank)
    problems = []
    if set(terms) != set(ref_terms):
        problems.append(f"term names differ: {sorted(terms)} vs {sorted(ref_terms)}")
    for name in sorted(set(terms) & set(ref_terms)):
        mean = terms[name].clone()
        dist.all_reduce(mean)  # same call order on every process
        mean /= world
        if max_diff(mean, ref_terms[name]) > TOLERANCE:
            problems.append(
                f"{name}: mean over processes {mean.item():.8f} != single process {ref_terms[name]:.8f}"
            )
        if not case.local_loss and max_diff(terms[name], ref_terms[name]) > TOLERANCE:
            problems.append(
                f"{name}: this process {terms[name].item():.8f} != single process {ref_terms[name]:.8f}"
            )
    if set(grads) != set(ref_grads):
        problems.append(f"parameter names differ: {sorted(grads)} vs {sorted(ref_grads)}")
    for name in sorted(set(grads) & set(ref_grads)):
        diff = max_diff(grads[name], ref_grads[name])
        if diff > TOLERANCE:
            problems.append(f"grad {name}: max |diff| {diff:.3g} > {TOLERANCE}")
    nonzero = sum(g.abs().sum().item() > 0 for g in ref_grads.values())
    if nonzero == 0:
        problems.append("every reference gradient is zero: the check would prove nothing")
    return problems


def summarize(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items())


def main() -> int:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank, world = dist.get_rank(), dist.get_world_size()
    assert accelerator.num_processes == WORLD and world == WORLD, (
        f"expected {WORLD} processes, got accelerate={accelerator.num_processes}, torch.distributed={world}"
    )
    failures = 0
    for case in CASES:
        problems = compare(case, rank, world)
        failures += bool(problems)
        status = "FAIL" if problems else "ok"
        print(f"[rank {rank}/{world} {dist.get_backend()}] {case.name}: {status}", flush=True)
        for problem in problems:
            print(f"    {problem}", flush=True)
    if rank == 0:
        print(f"reference terms ({CASES[0].name}): {summarize(reference(CASES[0])[0])}", flush=True)
    dist.barrier()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
