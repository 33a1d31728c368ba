"""The frozen anchor's rows of a test split, computed once per split and anchor identity.

Every evaluation of a run, of its baselines and of the other runs of an experiment (the demo
evaluates three) embeds the same test images with the same frozen anchor. The first evaluation
stores the anchor's rows (embeddings, features, which samples have an image, the images that
did not decode) beside the shards, in the anchor cache's folder::

    <shards folder>/anchor-cache/<anchor digest>/eval/<split digest>.safetensors

and the next ones take them by sample key (:class:`~anchorbind.evaluation.extract.Reuse`):
the images are then neither decoded nor encoded. The split digest covers every shard's path,
size and modification time, so a changed split is embedded again; the anchor digest is the
one of :mod:`anchorbind.data.anchor_store`. Only local shards get one (a remote split is
embedded each time), a folder that cannot be written is left alone, and an unreadable cache
file is ignored (the split is embedded live, as without one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from anchorbind.data.anchor_store import DEFAULT_ROOT_NAME, identity_digest
from anchorbind.data.shardlist import expand_shards, is_url
from anchorbind.evaluation.extract import EmbeddingSet, Reuse
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["SplitAnchorCache"]

log = logging.getLogger("anchorbind.evaluation")


class SplitAnchorCache:
    """Where the anchor rows of one local split are stored, and reading / writing them."""

    def __init__(self, path: Path, identity: str) -> None:
        self.path, self.identity = path, identity

    @classmethod
    def for_split(cls, shards: str, identity: str) -> SplitAnchorCache | None:
        """The cache of ``shards`` for ``identity``; None when a shard is not a local file."""
        try:
            urls = expand_shards(shards)
        except FileNotFoundError:
            return None
        if not urls or any(is_url(u) or not Path(u).is_file() for u in urls):
            return None
        stamp = [(str(Path(u).resolve()), os.stat(u).st_size, os.stat(u).st_mtime_ns) for u in urls]
        split = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
        folder = Path(urls[0]).parent / DEFAULT_ROOT_NAME / identity_digest(identity) / "eval"
        return cls(folder / f"{split}.safetensors", identity)

    def load(self) -> Reuse | None:
        """The stored rows, or None when there are none (or they cannot be read)."""
        if not self.path.is_file():
            return None
        try:
            rows = EmbeddingSet.load(self.path)
        except Exception as err:  # a damaged cache only costs the live embedding it would have saved
            log.warning("ignoring the evaluation anchor cache %s (%s)", self.path, err)
            return None
        return Reuse(rows, self.identity) if ANCHOR_MODALITY in rows.embeddings else None

    def save(self, emb: EmbeddingSet) -> None:
        """Store the anchor's rows of a whole-split embedding (nothing when the folder is read-only)."""
        rows = EmbeddingSet(
            keys=list(emb.keys),
            embeddings={ANCHOR_MODALITY: emb.embeddings[ANCHOR_MODALITY]},
            features={ANCHOR_MODALITY: emb.features[ANCHOR_MODALITY]},
            masks={ANCHOR_MODALITY: emb.masks[ANCHOR_MODALITY]},
            meta=[None] * len(emb.keys),
            errors=[e for e in emb.errors if e.get("modality") == ANCHOR_MODALITY],
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rows.save(self.path)
        except OSError as err:
            log.info("not caching the split's anchor rows in %s (%s)", self.path.parent, err)
