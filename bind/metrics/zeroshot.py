"""Zero-shot classification through text prompts (CLIP's protocol, used by ImageBind).

A class is represented by the text embedding of prompts such as "a photo of a dog."; an
embedding of any bound modality (image, audio, depth...) is classified by its most similar
class. Following Radford et al. 2021 ("Learning Transferable Visual Models From Natural
Language Supervision", Sec. 3.1.4) several templates per class are *ensembled*: each prompt
embedding is L2-normalised, the prompts of a class are averaged and the mean is normalised
again. ImageBind (Girdhar et al. 2023) evaluates audio and depth zero-shot in exactly this way,
through the text encoder, which is what makes the result "emergent".

Text encoding itself (a model) is the caller's job; these functions take its outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anchorbind.errors import InputError
from anchorbind.metrics.checks import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    ArrayLike,
    as_label_array,
    as_matrix,
    check_ks,
    resolve_chunk_size,
    resolve_device,
)
from anchorbind.metrics.retrieval import _TARGET_RANK_BYTES, _target_ranks

__all__ = [
    "ANCHOR_TEMPLATES",
    "DEFAULT_TEMPLATES",
    "build_prompts",
    "zero_shot_accuracy",
    "zero_shot_classifier",
    "zero_shot_predict",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a {}.",)
"""Modality-neutral template set: the one prompt that names no modality.

Templates that name the evaluated modality come from its plugin (``ModalityPlugin.prompt_templates``,
e.g. "the sound of a {}.") and, for the anchor, :data:`ANCHOR_TEMPLATES`; prompt wording
measurably changes zero-shot accuracy, so pass those as ``templates`` when the modality is known."""

ANCHOR_TEMPLATES: tuple[str, ...] = ("a {}.", "a photo of a {}.", "a picture of a {}.", "an image of a {}.")
"""The anchor's own templates (it is an image encoder): CLIP-style prompts naming a photo."""


def build_prompts(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[list[str]]:
    """Fills every template with every class name: ``prompts[c][t] = templates[t].format(name_c)``.

    Args:
        class_names: one readable name per class ("dog", "church bell").
        templates: format strings with exactly one ``{}`` placeholder.

    Returns:
        A list with, per class, one prompt per template (ready for the text encoder).

    Raises:
        ValueError: empty inputs, or a template without exactly one ``{}``.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates:
        raise ValueError("templates is empty")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain exactly one '{{}}' placeholder")
    return [[template.format(name) for template in templates] for name in class_names]


def zero_shot_classifier(class_text_embeddings: ArrayLike | Sequence[ArrayLike]) -> torch.Tensor:
    """Ensembles prompt embeddings into one unit vector per class (CLIP prompt ensembling).

    Normalising each prompt before averaging gives every prompt the same weight whatever the
    norm of its raw embedding; normalising the mean puts the class vectors on the sphere, so a
    dot product with a normalised query is a cosine similarity.

    Args:
        class_text_embeddings: a ``(C, T, D)`` tensor (T prompts per class) or a list of C
            ``(T_c, D)`` matrices when classes have different numbers of prompts.

    Returns:
        ``(C, D)`` float32 classifier with unit rows, on the input's device.

    Raises:
        InputError: wrong shapes, non-finite values, or a class whose prompt mean is zero.
    """
    if isinstance(class_text_embeddings, torch.Tensor) and class_text_embeddings.ndim == 3:
        per_class = list(class_text_embeddings.unbind(0))
    elif isinstance(class_text_embeddings, (list, tuple)):
        per_class = list(class_text_embeddings)
    else:
        tensor = torch.as_tensor(class_text_embeddings)
        if tensor.ndim != 3:
            raise InputError(
                "class_text_embeddings",
                f"expected (C, T, D) or a list of (T_c, D) matrices, got shape {tuple(tensor.shape)}",
            )
        per_class = list(tensor.unbind(0))
    if not per_class:
        raise InputError("class_text_embeddings", "no classes given")
    device = per_class[0].device if isinstance(per_class[0], torch.Tensor) else None
    rows = []
    for index, prompts in enumerate(per_class):
        matrix = as_matrix(prompts, f"class_text_embeddings[{index}]", device=device)
        mean = F.normalize(matrix, dim=1).mean(dim=0)
        if float(mean.norm()) < 1e-6:
            raise InputError(f"class_text_embeddings[{index}]", "prompt embeddings cancel out (zero mean)")
        rows.append(mean)
    widths = {row.shape[0] for row in rows}
    if len(widths) != 1:
        raise InputError("class_text_embeddings", f"classes have different embedding widths {sorted(widths)}")
    return F.normalize(torch.stack(rows), dim=1)


def zero_shot_predict(
    embeddings: ArrayLike,
    classifier: ArrayLike,
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The most similar class of every embedding (``argmax`` of ``embeddings @ classifier.T``).

    Args:
        embeddings: ``(N, D)`` embeddings of the evaluated modality.
        classifier: ``(C, D)`` class vectors from :func:`zero_shot_classifier`.
        chunk_size: rows scored at once; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the similarities are computed (CPU when None).

    Returns:
        ``(N,)`` int64 CPU tensor of class indices.
    """
    device = resolve_device(device)
    query = as_matrix(embeddings, "embeddings", device=device)
    classes = as_matrix(classifier, "classifier", device=device)
    _check_widths(query, classes)
    chunk = resolve_chunk_size(chunk_size, classes.shape[0], 4, memory_budget_bytes)
    return torch.cat([(query[i : i + chunk] @ classes.T).argmax(dim=1).cpu() for i in range(0, len(query), chunk)])


def zero_shot_accuracy(
    embeddings: ArrayLike,
    labels: ArrayLike,
    classifier: ArrayLike,
    ks: Sequence[int] = (1, 5),
    *,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Top-k zero-shot accuracy: the fraction of embeddings whose true class is among the k best.

    The true class's rank is ``1 + #{classes scoring strictly higher}`` -- the optimistic tie
    rule of :mod:`anchorbind.metrics.retrieval`, i.e. this is instance retrieval from the embeddings into
    the class vectors. The query norm does not change a ranking, so embeddings need not be
    normalised.

    Args:
        embeddings: ``(N, D)`` embeddings of the evaluated modality.
        labels: ``(N,)`` integer class indices into the classifier's rows.
        classifier: ``(C, D)`` class vectors from :func:`zero_shot_classifier`.
        ks: cut-offs; each must be at most C.
        chunk_size: rows scored at once; derived from ``memory_budget_bytes`` when None.
        memory_budget_bytes: working-memory budget used to pick ``chunk_size``.
        device: where the similarities are computed (CPU when None).

    Returns:
        ``{"acc@1": ..., "acc@5": ..., "num_samples": N}`` with accuracies in [0, 1].

    Raises:
        InputError: malformed embeddings, classifier or labels (non-integer, out of range).
        ValueError: a k larger than the number of classes.
    """
    device = resolve_device(device)
    query = as_matrix(embeddings, "embeddings", device=device)
    classes = as_matrix(classifier, "classifier", device=device)
    _check_widths(query, classes)
    num_classes = classes.shape[0]
    ks = check_ks(ks, num_classes, f"the classifier has {num_classes} classes")
    label_array = as_label_array(labels, query.shape[0], "labels")
    if label_array.ndim != 1 or label_array.dtype.kind not in "iu":
        raise InputError("labels", f"expected 1-D integer class indices, got {label_array.dtype} {label_array.shape}")
    if label_array.min() < 0 or label_array.max() >= num_classes:
        raise InputError(
            "labels", f"class indices must lie in 0..{num_classes - 1}, got {label_array.min()}..{label_array.max()}"
        )
    chunk = resolve_chunk_size(chunk_size, num_classes, _TARGET_RANK_BYTES, memory_budget_bytes)
    ranks = _target_ranks(query, classes, torch.as_tensor(label_array, dtype=torch.int64), "optimistic", chunk)
    result = {f"acc@{k}": float((ranks <= k).to(torch.float64).mean()) for k in ks}
    result["num_samples"] = float(len(ranks))
    return result


def _check_widths(embeddings: torch.Tensor, classifier: torch.Tensor) -> None:
    if embeddings.shape[1] != classifier.shape[1]:
        raise InputError(
            "classifier",
            f"embedding widths differ: embeddings have {embeddings.shape[1]} dims, classifier {classifier.shape[1]}",
        )
