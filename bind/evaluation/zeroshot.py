"""Zero-shot classification of every modality through the caption plugin (ImageBind's emergent protocol).

Class names are the values of the label attribute found in the data's JSON; each class is the
ensembled embedding, by the plugin that ``encodes_text``, of several prompts that name the
evaluated modality (its plugin's ``prompt_templates``, e.g. "the sound of a {}." for audio; the
anchor's own :data:`~anchorbind.metrics.zeroshot.ANCHOR_TEMPLATES`), so no classifier is
trained on any modality.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.schema import attribute_labels
from anchorbind.metrics import (
    ANCHOR_TEMPLATES,
    DEFAULT_TEMPLATES,
    build_prompts,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from anchorbind.model import BindModel
from anchorbind.registry import ANCHOR_MODALITY, caption_modality

__all__ = ["modality_templates", "zero_shot_section"]


def modality_templates(model: BindModel, name: str) -> tuple[str, ...]:
    """The prompt templates naming modality ``name``: the anchor's, or its plugin's ``prompt_templates``."""
    if name == ANCHOR_MODALITY:
        return ANCHOR_TEMPLATES
    return tuple(getattr(model.plugins[name], "prompt_templates", ()) or DEFAULT_TEMPLATES)


def zero_shot_section(model: BindModel, emb: EmbeddingSet, *, label_attribute: str = "category",
                      notes: list[str] | None = None) -> dict[str, Any]:
    """Accuracy@1/3 of prompt classification for every modality but the caption one, with chance.

    The prompts are embedded by the model's caption modality
    (:func:`anchorbind.registry.caption_modality`: the plugin that ``encodes_text``).

    Returns:
        ``{"classes": [...], "<modality>": {acc@1, acc@3, num_samples, chance, templates}}``;
        empty when no plugin of the model encodes text or the samples have no labels.
    """
    caption = caption_modality(model.plugins)
    if caption is None:
        if notes is not None:
            notes.append("zero_shot: skipped, no plugin of the model encodes_text (natural-language prompts)")
        return {}
    rows = torch.arange(len(emb.keys))
    labels = attribute_labels(emb.meta, rows, label_attribute)
    if labels is None:
        if notes is not None:
            notes.append(f"zero_shot: skipped, not every sample's JSON has attributes.{label_attribute}")
        return {}
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        if notes is not None:
            notes.append(f"zero_shot: skipped, only {len(classes)} {label_attribute} value in the data")
        return {}
    out: dict[str, Any] = {"classes": classes}
    for name in emb.modalities:
        mine = emb.masks[name].nonzero().squeeze(1)
        if name == caption or len(mine) == 0:
            continue
        templates = modality_templates(model, name)
        with torch.inference_mode():
            prompts = [model.embed({caption: group})[caption].float().cpu()
                       for group in build_prompts(classes, templates)]
        targets = np.array([classes.index(c) for c in labels[mine.numpy()]])
        ks = tuple(k for k in (1, 3) if k <= len(classes))
        result = zero_shot_accuracy(emb.embeddings[name][mine], targets, zero_shot_classifier(prompts), ks=ks)
        out[name] = {**result, "chance": 1.0 / len(classes), "templates": list(templates)}
    return out
