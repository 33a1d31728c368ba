"""Zero-shot classification of every modality through the text plugin (ImageBind's emergent protocol).

Class names are the values of the label attribute found in the data's JSON; each class is the
ensembled text embedding of several prompts that name the evaluated modality ("the sound of a
{}." for audio), so no classifier is trained on any modality.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.schema import CAPTION_MODALITY, attribute_labels
from anchorbind.metrics import (
    DEFAULT_TEMPLATES,
    MODALITY_TEMPLATES,
    build_prompts,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from anchorbind.model import BindModel

__all__ = ["zero_shot_section"]


def zero_shot_section(model: BindModel, emb: EmbeddingSet, *, label_attribute: str = "category",
                      notes: list[str] | None = None) -> dict[str, Any]:
    """Accuracy@1/3 of text-prompt classification for every non-text modality, with chance.

    Returns:
        ``{"classes": [...], "<modality>": {acc@1, acc@3, num_samples, chance, templates}}``;
        empty when the model has no text plugin or the samples have no labels.
    """
    if CAPTION_MODALITY not in model.plugins:
        if notes is not None:
            notes.append("zero_shot: skipped, the model has no text plugin")
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
        if name == CAPTION_MODALITY or len(mine) == 0:
            continue
        templates = tuple(MODALITY_TEMPLATES.get(name, DEFAULT_TEMPLATES))
        with torch.inference_mode():
            prompts = [model.embed({CAPTION_MODALITY: group})[CAPTION_MODALITY].float().cpu()
                       for group in build_prompts(classes, templates)]
        targets = np.array([classes.index(c) for c in labels[mine.numpy()]])
        ks = tuple(k for k in (1, 3) if k <= len(classes))
        result = zero_shot_accuracy(emb.embeddings[name][mine], targets, zero_shot_classifier(prompts), ks=ks)
        out[name] = {**result, "chance": 1.0 / len(classes), "templates": list(templates)}
    return out
