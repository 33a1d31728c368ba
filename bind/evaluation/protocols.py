"""The published evaluation protocols of standard datasets, run on shards that declare one.

A dataset reader (``anchorbind shards ROOT --format esc50``, ...) writes into every sample's JSON
the protocol its authors' papers report, as data, so this module names no dataset and no
modality: ``json.dataset.protocol`` is one of

* ``{"task": "zero_shot", "modality": M, "label": "category", "group_by": "fold", "classes": [...],
  "split": "test", "prompts": [...]}``: zero-shot classification of modality ``M`` from the label
  names, embedded by the caption plugin (the plugin that ``encodes_text``) with ``prompts``
  (default: ``M``'s plugin's ``prompt_templates``), top-1 / top-5 over the samples of ``split``
  whose label is in ``classes`` (all when absent), per ``group_by`` value (ESC-50's five folds)
  and overall. ImageBind's Table 2 reports top-1 (ESC-50: the mean over the folds; NYU-D, SUN-D:
  scene classification from depth);
* ``{"task": "caption_retrieval", "modality": M, "captions": "captions"}``: every caption in
  ``json.captions`` is a query (Clotho: 5 per clip, AudioCaps test: 5) whose one relevant item
  is its own clip among all clips of ``M``: caption->clip R@1/R@5/R@10, and clip->caption R@1/R@10
  (a clip's query is answered by any of its captions), as Clotho's and AudioCaps' retrieval tables.

Numbers are reported as fractions and, under ``table``, as percentages rounded as papers print
them, so a run can be put next to ImageBind's Table 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from anchorbind.evaluation.extract import EmbeddingSet
from anchorbind.evaluation.zeroshot import modality_templates
from anchorbind.metrics import build_prompts, zero_shot_classifier
from anchorbind.metrics.retrieval import category_ranking, target_ranks
from anchorbind.model import BindModel
from anchorbind.registry import caption_modality

__all__ = ["PROTOCOL_TASKS", "declared_protocol", "protocol_section"]

PROTOCOL_TASKS = ("zero_shot", "caption_retrieval")


def _dataset(record: Mapping[str, Any] | None) -> Mapping[str, Any]:
    block = record.get("dataset") if isinstance(record, Mapping) else None
    return block if isinstance(block, Mapping) else {}


def declared_protocol(meta: Sequence[Mapping[str, Any] | None]) -> tuple[str, dict[str, Any]] | None:
    """``(dataset name, protocol)`` declared by the samples, or None when none declares one."""
    for record in meta:
        dataset = _dataset(record)
        if isinstance(dataset.get("protocol"), Mapping):
            return str(dataset.get("name", "dataset")), dict(dataset["protocol"])
    return None


def _class_key(name: Any) -> str:
    """Class names compare without case or underscores (``living_room`` is ``living room``)."""
    return " ".join(str(name).replace("_", " ").split()).lower()


def _percent(value: float) -> float:
    return round(100.0 * value, 1)


def _caption_embeddings(model: BindModel, caption: str, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    with torch.inference_mode():
        return model.embed({caption: texts}, batch_size=batch_size)[caption].float().cpu()


def _zero_shot(model: BindModel, emb: EmbeddingSet, name: str, spec: Mapping[str, Any], caption: str,
               notes: list[str]) -> dict[str, Any]:
    modality, label = str(spec["modality"]), str(spec.get("label", "category"))
    if modality not in emb.modalities:
        notes.append(f"protocol {name}: the model has no {modality!r} plugin")
        return {}
    wanted_split = spec.get("split")
    allowed = {_class_key(c): str(c).replace("_", " ") for c in spec.get("classes") or []}
    rows, labels, groups = [], [], []
    outside_split = outside_classes = 0
    for i in np.flatnonzero(emb.masks[modality].numpy()):
        record = emb.meta[i] or {}
        dataset = _dataset(record)
        if wanted_split is not None and dataset.get("split") != wanted_split:
            outside_split += 1
            continue
        value = (record.get("attributes") or {}).get(label)
        if value is None:
            continue
        key = _class_key(value)
        if allowed and key not in allowed:
            outside_classes += 1
            continue
        rows.append(int(i))
        labels.append(key)
        groups.append(dataset.get(spec["group_by"]) if spec.get("group_by") else None)
    if outside_split:
        notes.append(f"protocol {name}: {outside_split} samples outside its {wanted_split!r} split left out")
    if outside_classes:
        notes.append(f"protocol {name}: {outside_classes} samples of classes outside its {len(allowed)} left out")
    classes = sorted(allowed) if allowed else sorted(set(labels))
    if len(rows) == 0 or len(classes) < 2:
        notes.append(f"protocol {name}: skipped, {len(rows)} samples and {len(classes)} classes")
        return {}
    names = [allowed.get(c, c) for c in classes]
    templates = tuple(spec.get("prompts") or modality_templates(model, modality))
    prompts = [_caption_embeddings(model, caption, group) for group in build_prompts(names, templates)]
    classifier = zero_shot_classifier(prompts)
    scores = emb.embeddings[modality][rows].float() @ classifier.T
    targets = torch.tensor([classes.index(c) for c in labels])
    ranks = 1 + (scores > scores.gather(1, targets[:, None])).sum(1)  # ties counted in the sample's favour
    ks = [k for k in (1, 5) if k <= len(classes)]
    result: dict[str, Any] = {
        "task": "zero_shot", "modality": modality, "label": label, "num_samples": len(rows),
        "num_classes": len(classes), "classes": names, "templates": list(templates),
        **{f"top{k}": float((ranks <= k).double().mean()) for k in ks},
    }
    table = {f"{name} zero-shot top-1 (%)": _percent(result["top1"])}
    if spec.get("group_by"):
        by_group: dict[str, dict[str, float]] = {}
        group_array = np.array([str(g) for g in groups])
        for group in sorted(set(group_array.tolist())):
            mask = torch.from_numpy(group_array == group)
            by_group[group] = {f"top{k}": float((ranks[mask] <= k).double().mean()) for k in ks}
            by_group[group]["num_samples"] = int(mask.sum())
        top1 = np.array([block["top1"] for block in by_group.values()])
        result[f"by_{spec['group_by']}"] = by_group
        result[f"top1_mean_over_{spec['group_by']}"] = float(top1.mean())
        result[f"top1_std_over_{spec['group_by']}"] = float(top1.std(ddof=1)) if len(top1) > 1 else 0.0
        table = {f"{name} zero-shot top-1 (%), mean of {len(top1)} {spec['group_by']}s":
                 _percent(float(top1.mean()))}
    result["table"] = table
    return result


def _caption_retrieval(model: BindModel, emb: EmbeddingSet, name: str, spec: Mapping[str, Any], caption: str,
                       notes: list[str]) -> dict[str, Any]:
    modality, field = str(spec["modality"]), str(spec.get("captions", "captions"))
    if modality not in emb.modalities:
        notes.append(f"protocol {name}: the model has no {modality!r} plugin")
        return {}
    clips, texts, owners = [], [], []
    for i in np.flatnonzero(emb.masks[modality].numpy()):
        captions = (emb.meta[i] or {}).get(field)
        if not isinstance(captions, list) or not captions:
            continue
        clips.append(int(i))
        for text in captions:
            texts.append(str(text))
            owners.append(len(clips) - 1)
    if len(clips) < 2:
        notes.append(f"protocol {name}: skipped, {len(clips)} clips with captions")
        return {}
    gallery = emb.embeddings[modality][clips].float()
    queries = _caption_embeddings(model, caption, texts)
    owner = np.array(owners)
    to_clip = target_ranks(queries, gallery, owner)
    to_caption = category_ranking(gallery, queries, np.arange(len(clips)), owner).first_relevant_rank
    result: dict[str, Any] = {
        "task": "caption_retrieval", "modality": modality, "num_clips": len(clips), "num_captions": len(texts),
        "captions_per_clip": round(len(texts) / len(clips), 3),
        **{f"{caption}->{modality}/R@{k}": float((to_clip <= k).double().mean()) for k in (1, 5, 10)},
        f"{caption}->{modality}/median_rank": float(np.median(to_clip.numpy())),
        **{f"{modality}->{caption}/R@{k}": float((to_caption <= k).double().mean()) for k in (1, 5, 10)},
    }
    result["table"] = {f"{name} {caption}->{modality} R@{k} (%)": _percent(result[f"{caption}->{modality}/R@{k}"])
                       for k in (1, 10)}
    result["table"].update({f"{name} {modality}->{caption} R@{k} (%)":
                            _percent(result[f"{modality}->{caption}/R@{k}"]) for k in (1, 10)})
    return result


def protocol_section(model: BindModel, emb: EmbeddingSet, *, protocol: str = "auto",
                     notes: list[str] | None = None) -> dict[str, Any]:
    """``{dataset name: results}`` of the protocol the shards declare (``protocol="auto"``), or ``{}``.

    Args:
        model: embeds the prompts and captions with its caption plugin.
        emb: the evaluated split's embeddings and sample JSON.
        protocol: ``"auto"`` (the declared one, if any), ``"none"``, or a dataset name that must
            match the declared one.
        notes: where skipped parts are explained.
    """
    notes = notes if notes is not None else []
    if protocol == "none":
        return {}
    declared = declared_protocol(emb.meta)
    if declared is None:
        if protocol != "auto":
            notes.append(f"protocol {protocol}: the shards declare no protocol (convert them with --format)")
        return {}
    name, spec = declared
    if protocol not in ("auto", name):
        notes.append(f"protocol {protocol}: the shards declare {name!r}'s protocol instead; not run")
        return {}
    caption = caption_modality(model.plugins)
    if caption is None:
        notes.append(f"protocol {name}: skipped, no plugin of the model encodes_text")
        return {}
    task = spec.get("task")
    if task == "zero_shot":
        result = _zero_shot(model, emb, name, spec, caption, notes)
    elif task == "caption_retrieval":
        result = _caption_retrieval(model, emb, name, spec, caption, notes)
    else:
        notes.append(f"protocol {name}: unknown task {task!r} (known: {list(PROTOCOL_TASKS)})")
        return {}
    return {name: result} if result else {}
