"""Embed a whole evaluation split once, keeping rows aligned across modalities.

Evaluation, analysis and the report all work on the same arrays: per modality the bound
embedding, the plugin's native trunk features, and which rows have that modality; per sample its
key and metadata (the world's ground-truth attributes). Computing them once and storing them as
safetensors keeps ``anchorbind eval`` and ``anchorbind report`` independent and cheap to rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from anchorbind.data.loader import build_loader
from anchorbind.data.shardlist import expand_shards
from anchorbind.model import BindModel
from anchorbind.plugin import move_to_device
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["EmbeddingSet", "EmbeddingShare", "Reuse", "embed_share", "extract_embeddings", "merge_shares"]


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
        """Write atomically: tensors as safetensors, keys/meta/errors as a JSON-lines sidecar.

        The safetensors header is capped (100 MB), so per-sample keys and metadata in it fail
        with "header too large" at about 40k samples. They go to ``{stem}.{digest}.rows.jsonl``
        next to ``path`` instead (first line ``{"errors": [...]}``, then one ``{"key", "meta"}``
        object per row), named in the header with its SHA-256 and row count. The sidecar is
        written first and named by its content, and the safetensors file is replaced last, so
        the pair on disk is always consistent; the sidecar of the replaced file is then removed.
        """
        tensors: dict[str, torch.Tensor] = {}
        for m in self.embeddings:
            tensors[f"embeddings/{m}"] = self.embeddings[m].contiguous()
            tensors[f"features/{m}"] = self.features[m].contiguous()
            tensors[f"masks/{m}"] = self.masks[m].to(torch.uint8).contiguous()
        path = Path(path)
        lines = [json.dumps({"errors": self.errors}) + "\n"]
        rows = zip(self.keys, self.meta, strict=True)
        lines.extend(json.dumps({"key": key, "meta": meta}) + "\n" for key, meta in rows)
        payload = "".join(lines).encode("utf-8")
        digest = hashlib.sha256(payload).hexdigest()
        rows_name = f"{path.stem}.{digest[:16]}{ROWS_SUFFIX}"
        previous = _rows_file_of(path)
        _write_atomically(path.with_name(rows_name), payload)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(
            tensors,
            str(tmp),
            metadata={
                "format": ROWS_FORMAT,
                "rows_file": rows_name,
                "rows_sha256": digest,
                "num_rows": str(len(self.keys)),
            },
        )
        os.replace(tmp, path)
        if previous is not None and previous != rows_name:
            path.with_name(previous).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingSet:
        """Read a file written by :meth:`save`: the sidecar layout, or the older one with keys,
        meta and errors as JSON in the safetensors header.

        Raises:
            ValueError: the sidecar named in the header is missing, altered or of another length.
        """
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        names = sorted({k.split("/", 1)[1] for k in tensors if k.startswith("embeddings/")})
        if "rows_file" in metadata:
            keys, meta, errors = _read_rows(path, metadata)
        else:  # the layout before the sidecar
            keys, meta, errors = (json.loads(metadata[name]) for name in ("keys", "meta", "errors"))
        return cls(
            keys=keys,
            embeddings={m: tensors[f"embeddings/{m}"] for m in names},
            features={m: tensors[f"features/{m}"] for m in names},
            masks={m: tensors[f"masks/{m}"].bool() for m in names},
            meta=meta,
            errors=errors,
        )


ROWS_FORMAT = "anchorbind-embeddings/2"
ROWS_SUFFIX = ".rows.jsonl"


def _write_atomically(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _rows_file_of(path: Path) -> str | None:
    """The sidecar named by an existing embeddings file, if any (None when absent or unreadable)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            name = (handle.metadata() or {}).get("rows_file")
    except Exception:  # an unreadable previous file is replaced anyway
        return None
    return name if name and Path(name).name == name else None


def _read_rows(path: Path, metadata: dict[str, str]) -> tuple[list[str], list[dict[str, Any] | None], list[Any]]:
    name = metadata["rows_file"]
    if Path(name).name != name:
        raise ValueError(f"{path}: the header names rows file {name!r}, which is not a plain file name")
    rows_path = path.with_name(name)
    if not rows_path.is_file():
        raise ValueError(f"{path}: its keys and metadata file {rows_path.name} is missing (copy it along)")
    payload = rows_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != metadata.get("rows_sha256"):
        raise ValueError(f"{path}: {rows_path.name} does not match the checksum in the header")
    lines = payload.decode("utf-8").splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    if len(rows) != int(metadata.get("num_rows", -1)):
        raise ValueError(f"{path}: {rows_path.name} has {len(rows)} rows, the header says {metadata.get('num_rows')}")
    return [row["key"] for row in rows], [row["meta"] for row in rows], json.loads(lines[0])["errors"]


def _shard_indexer(urls: Sequence[str]) -> Callable[[str | None], int]:
    """``url -> position of its shard in urls`` (``len(urls)`` when unknown). A URL the reader wrapped
    (a ``pipe:`` command around it) is found by the shard it contains."""
    first: dict[str, int] = {}
    for index, url in enumerate(urls):
        first.setdefault(str(url), index)
    found: dict[str | None, int] = {}

    def index_of(url: str | None) -> int:
        if url not in found:
            if url is None:
                found[url] = len(urls)
            elif url in first:
                found[url] = first[url]
            else:
                inside = [(len(u), i) for u, i in first.items() if u in url]
                found[url] = min(inside, key=lambda c: (-c[0], c[1]))[1] if inside else len(urls)
        return found[url]

    return index_of


@dataclass
class EmbeddingShare:
    """The rows of a split that one process embedded (:func:`embed_share`), before they are merged.

    Attributes:
        rows: the rows, in the order this process's loader gave them.
        shard_of_row: per row, the position of its shard in the split's shard list.
        shard_of_error: per decode error, the same (``len(shard list)`` when it names no shard).
    """

    rows: EmbeddingSet
    shard_of_row: list[int]
    shard_of_error: list[int]


@dataclass
class Reuse:
    """The frozen anchor's rows of an earlier :class:`EmbeddingSet`, reused by sample key.

    The anchor is frozen, so every checkpoint of a run embeds the test images exactly as the
    final model does: evaluating the checkpoints need not decode and encode them again.

    Attributes:
        rows: the earlier embedding (the final model's, for its checkpoints).
        anchor_identity: the identity of the anchor that made them; a model with another anchor
            embeds its images itself.
    """

    rows: EmbeddingSet
    anchor_identity: str

    def __post_init__(self) -> None:
        self._index = {key: i for i, key in enumerate(self.rows.keys)}

    def modalities(self, model: BindModel) -> tuple[str, ...]:
        usable = model.anchor.identity == self.anchor_identity and ANCHOR_MODALITY in self.rows.embeddings
        return (ANCHOR_MODALITY,) if usable else ()

    def fill(self, name: str, keys: Sequence[str], present: torch.Tensor, chunk: dict[str, list[torch.Tensor]]
             ) -> None:
        """Append the rows of ``keys`` to ``chunk``; ``present``: which samples hold the modality's
        member. A sample without a row here (its image failed to decode) gets zeros, mask False."""
        found = [self._index.get(key) for key in keys]
        rows = torch.tensor([i if i is not None else 0 for i in found], dtype=torch.long)
        have = torch.tensor([i is not None for i in found], dtype=torch.bool) & self.rows.masks[name][rows] & present
        chunk["emb"].append(self.rows.embeddings[name][rows] * have[:, None])
        chunk["feat"].append(self.rows.features[name][rows] * have[:, None])
        chunk["mask"].append(have)

    def errors(self, name: str) -> list[dict[str, Any]]:
        """The decode errors the earlier embedding met for ``name`` (reported again: not decoded now)."""
        return [e for e in self.rows.errors if e.get("modality") == name]


class _PresenceOnly:
    """A processor that finds a modality's member without decoding it: the loader then keeps the
    samples that hold it and says which do (``batch["mask"]``), and the rows come from :class:`Reuse`."""

    def __init__(self, sample_keys: Sequence[str]) -> None:
        self.sample_keys = tuple(sample_keys)

    def load(self, source: Any, *, train: bool = False) -> bool:
        return True

    def collate(self, samples: Sequence[Any]) -> int:
        return len(samples)


@torch.inference_mode()
def embed_share(
    model: BindModel,
    shards: str,
    *,
    batch_size: int = 128,
    num_workers: int = 2,
    max_samples: int | None = None,
    progress: bool = True,
    reuse: Reuse | None = None,
) -> EmbeddingShare:
    """Embed what the evaluation loader gives this process: the whole split in a single process,
    this rank's shards in a process group (each sample to exactly one rank).

    ``max_samples`` keeps the first that many rows in the loader's order. Merge shares with
    :func:`merge_shares` (:func:`extract_embeddings` does both in one process). ``reuse``: rows
    of modalities embedded before by the same frozen encoder, taken by key instead of decoding
    and encoding them again.
    """
    model.eval()
    reused = reuse.modalities(model) if reuse is not None else ()
    # no model: what workers get; a reused modality is not even decoded
    processors = {name: _PresenceOnly(model.processor(name).sample_keys) if name in reused else model.processor(name)
                  for name in model.modalities}
    index_of = _shard_indexer(expand_shards(shards))
    loader = build_loader(shards, processors, train=False, batch_size=batch_size, num_workers=num_workers)
    keys: list[str] = []
    urls: list[str | None] = []
    meta: list[dict[str, Any] | None] = []
    errors: list[dict[str, Any]] = []
    widths = {name: model.encoder(name).embed_dim if name == ANCHOR_MODALITY else model.encoder(name).trunk_dim
              for name in model.modalities}
    chunks: dict[str, dict[str, list[torch.Tensor]]] = {
        m: {"emb": [torch.zeros(0, model.embed_dim)], "feat": [torch.zeros(0, widths[m])],
            "mask": [torch.zeros(0, dtype=torch.bool)]} for m in model.modalities
    }
    for batch in tqdm(loader, desc="embed", disable=not progress, unit="batch"):
        if max_samples is not None and len(keys) >= max_samples:
            break
        size = len(batch["__key__"])
        keys.extend(batch["__key__"])
        urls.extend(batch.get("__url__") or [None] * size)
        meta.extend(batch.get("json") or [None] * size)
        errors.extend(batch.get("errors", ()))
        for name in model.modalities:
            if name in reused:
                present = batch["mask"][name].bool() if name in batch["mask"] else torch.zeros(size, dtype=torch.bool)
                reuse.fill(name, batch["__key__"], present, chunks[name])
                continue
            encoder = model.encoder(name)
            mask = batch["mask"][name].bool() if name in batch else torch.zeros(size, dtype=torch.bool)
            full_e, full_f = torch.zeros(size, model.embed_dim), torch.zeros(size, widths[name])
            if mask.any():
                inputs = move_to_device(batch[name], model.device)
                idx = mask.nonzero().squeeze(1)
                features, embeddings = encoder.forward_with_features(inputs)
                full_f.index_copy_(0, idx, features.float().cpu())
                full_e.index_copy_(0, idx, embeddings.float().cpu())
            chunks[name]["emb"].append(full_e)
            chunks[name]["feat"].append(full_f)
            chunks[name]["mask"].append(mask.bool())
    n = len(keys) if max_samples is None else min(len(keys), max_samples)
    if reused:
        kept = set(keys[:n])
        errors += [e for name in reused for e in reuse.errors(name) if e.get("key") in kept]
    rows = EmbeddingSet(
        keys=keys[:n],
        embeddings={m: torch.cat(c["emb"])[:n] for m, c in chunks.items()},
        features={m: torch.cat(c["feat"])[:n] for m, c in chunks.items()},
        masks={m: torch.cat(c["mask"])[:n] for m, c in chunks.items()},
        meta=meta[:n],
        errors=errors,
    )
    return EmbeddingShare(rows=rows, shard_of_row=[index_of(u) for u in urls[:n]],
                          shard_of_error=[index_of(e.get("url")) for e in errors])


def merge_shares(shares: Sequence[EmbeddingShare]) -> EmbeddingSet:
    """One :class:`EmbeddingSet` of the split from every process's share, in rank order.

    Rows come in shard order (the split's shard list), each shard's rows in tar order: the same
    rows in the same order whatever the number of processes and loader workers. A sample (shard
    and key) that an earlier share already holds is left out, so a loader that pads a process's
    share cannot count a sample twice; repeats within one share are kept, as they are in the
    data. Decode errors are ordered by shard the same way.
    """
    if not shares:
        raise ValueError("merge_shares: no share to merge")
    order: list[tuple[int, int, int]] = []  # (shard, share, row)
    taken: set[tuple[int, str]] = set()
    for number, share in enumerate(shares):
        mine: set[tuple[int, str]] = set()
        for row, (shard, key) in enumerate(zip(share.shard_of_row, share.rows.keys, strict=True)):
            if (shard, key) in taken:
                continue
            mine.add((shard, key))
            order.append((shard, number, row))
        taken |= mine
    order.sort()
    offsets = [0]
    for share in shares:
        offsets.append(offsets[-1] + len(share.rows.keys))
    index = torch.tensor([offsets[number] + row for _, number, row in order], dtype=torch.long)
    names = shares[0].rows.modalities

    def joined(field_of: Callable[[EmbeddingSet], dict[str, torch.Tensor]], name: str) -> torch.Tensor:
        return torch.cat([field_of(share.rows)[name] for share in shares]).index_select(0, index)

    errors = sorted(((shard, number, i, error) for number, share in enumerate(shares)
                     for i, (shard, error) in enumerate(zip(share.shard_of_error, share.rows.errors, strict=True))),
                    key=lambda item: item[:3])
    return EmbeddingSet(
        keys=[shares[number].rows.keys[row] for _, number, row in order],
        embeddings={m: joined(lambda e: e.embeddings, m) for m in names},
        features={m: joined(lambda e: e.features, m) for m in names},
        masks={m: joined(lambda e: e.masks, m) for m in names},
        meta=[shares[number].rows.meta[row] for _, number, row in order],
        errors=[error for *_, error in errors],
    )


def extract_embeddings(
    model: BindModel,
    shards: str,
    *,
    batch_size: int = 128,
    num_workers: int = 2,
    max_samples: int | None = None,
    progress: bool = True,
    reuse: Reuse | None = None,
) -> EmbeddingSet:
    """Embed every sample of ``shards`` exactly once with every modality of ``model``.

    The anchor always runs live here (cached embeddings are a training shortcut; evaluation
    also needs the anchor's trunk features). Rows come in shard order, then tar order, whatever
    ``num_workers`` (:func:`merge_shares`). ``max_samples`` keeps the first that many samples the
    loader gives (its deterministic order), then orders them the same way.

    In a process group the loader gives each process only its share: embed with
    :func:`embed_share` in every process and merge the gathered shares with :func:`merge_shares`
    (what ``anchorbind eval`` does under ``accelerate launch``).
    """
    return merge_shares([embed_share(model, shards, batch_size=batch_size, num_workers=num_workers,
                                     max_samples=max_samples, progress=progress, reuse=reuse)])
