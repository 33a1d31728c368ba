"""Embed a whole evaluation split once, keeping rows aligned across modalities.

Evaluation, analysis and the report all work on the same arrays: per modality the bound
embedding, the plugin's native trunk features, and which rows have that modality; per sample its
key and metadata (the world's ground-truth attributes). Computing them once and storing them as
safetensors keeps ``anchorbind eval`` and ``anchorbind report`` independent and cheap to rerun.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from anchorbind.data.loader import build_loader
from anchorbind.model import BindModel
from anchorbind.plugin import move_to_device
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["EmbeddingSet", "extract_embeddings"]


@dataclass
class EmbeddingSet:
    """Row-aligned embeddings of one split.

    Attributes:
        keys: sample keys, in loader order (N).
        embeddings: ``{modality: (N, D)}`` L2-normalised; rows without the modality are zero.
        features: ``{modality: (N, F_m)}`` native trunk features (the anchor's: pooled, unnormalised).
        masks: ``{modality: (N,) bool}``.
        meta: per-sample metadata dicts (``json`` member) or ``None``.
        errors: decode errors met while reading the split.
    """

    keys: list[str]
    embeddings: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    meta: list[dict[str, Any] | None]
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return list(self.embeddings)

    def subset(self, modality: str) -> torch.Tensor:
        """Embeddings of the rows that have ``modality``."""
        return self.embeddings[modality][self.masks[modality]]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as safetensors (tensors) with keys/meta/errors as JSON metadata."""
        tensors: dict[str, torch.Tensor] = {}
        for m in self.embeddings:
            tensors[f"embeddings/{m}"] = self.embeddings[m].contiguous()
            tensors[f"features/{m}"] = self.features[m].contiguous()
            tensors[f"masks/{m}"] = self.masks[m].to(torch.uint8).contiguous()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={
            "keys": json.dumps(self.keys), "meta": json.dumps(self.meta), "errors": json.dumps(self.errors),
        })
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingSet:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        names = sorted({k.split("/", 1)[1] for k in tensors if k.startswith("embeddings/")})
        return cls(
            keys=json.loads(metadata["keys"]),
            embeddings={m: tensors[f"embeddings/{m}"] for m in names},
            features={m: tensors[f"features/{m}"] for m in names},
            masks={m: tensors[f"masks/{m}"].bool() for m in names},
            meta=json.loads(metadata["meta"]),
            errors=json.loads(metadata["errors"]),
        )


@torch.inference_mode()
def extract_embeddings(
    model: BindModel,
    shards: str,
    *,
    batch_size: int = 128,
    num_workers: int = 2,
    max_samples: int | None = None,
    progress: bool = True,
) -> EmbeddingSet:
    """Embed every sample of ``shards`` exactly once with every modality of ``model``.

    The anchor always runs live here (cached embeddings are a training shortcut; evaluation
    also needs the anchor's trunk features). ``max_samples`` stops after that many samples (the
    first ones, in the loader's deterministic order).
    """
    model.eval()
    processors = {name: model.processor(name) for name in model.modalities}  # no model: what workers get
    loader = build_loader(shards, processors, train=False, batch_size=batch_size, num_workers=num_workers)
    keys: list[str] = []
    meta: list[dict[str, Any] | None] = []
    errors: list[dict[str, Any]] = []
    chunks: dict[str, dict[str, list[torch.Tensor]]] = {
        m: {"emb": [], "feat": [], "mask": []} for m in model.modalities
    }
    for batch in tqdm(loader, desc="embed", disable=not progress, unit="batch"):
        if max_samples is not None and len(keys) >= max_samples:
            break
        size = len(batch["__key__"])
        keys.extend(batch["__key__"])
        meta.extend(batch.get("json") or [None] * size)
        errors.extend(batch.get("errors", ()))
        for name in model.modalities:
            encoder = model.encoder(name)
            mask = batch["mask"][name].bool() if name in batch else torch.zeros(size, dtype=torch.bool)
            fwidth = encoder.embed_dim if name == ANCHOR_MODALITY else encoder.trunk_dim
            full_e, full_f = torch.zeros(size, model.embed_dim), torch.zeros(size, fwidth)
            if mask.any():
                inputs = move_to_device(batch[name], model.device)
                idx = mask.nonzero().squeeze(1)
                features, embeddings = encoder.forward_with_features(inputs)
                full_f.index_copy_(0, idx, features.float().cpu())
                full_e.index_copy_(0, idx, embeddings.float().cpu())
            chunks[name]["emb"].append(full_e)
            chunks[name]["feat"].append(full_f)
            chunks[name]["mask"].append(mask.bool())
    return EmbeddingSet(
        keys=keys,
        embeddings={m: torch.cat(c["emb"]) for m, c in chunks.items()},
        features={m: torch.cat(c["feat"]) for m, c in chunks.items()},
        masks={m: torch.cat(c["mask"]) for m, c in chunks.items()},
        meta=meta,
        errors=errors,
    )
