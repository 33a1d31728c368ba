"""Which samples each reader takes, epoch by epoch, and where a stopped stream resumes.

A *reader* is one DataLoader worker of one process: ``slots = world_size x workers`` of them
(``workers`` = ``max(num_workers, 1)``), reader ``slot = rank x workers + role``.

**Epoch order.** Epoch ``e`` lists the shards in an order drawn from ``(seed, e)``, the same on
every process: a permutation of all shards (``sampling="epoch"``), or as many draws with
replacement (``sampling="resampled"``, webdataset's ``ResampledShards`` semantics: a shard may
come twice or not at all). Every epoch has a new order; the stream goes on epoch after epoch
(training stops at ``steps``), or stops after ``epochs`` of them.

**Split.** With the shards' sample counts known (``manifest.json``, tar headers of local
files, or given): the epoch is the concatenation of its shards, ``N`` samples, and reader
``slot`` reads the contiguous range ``[slot x Q, (slot + 1) x Q)`` of it, with
``Q = batch_size x floor(N / (slots x batch_size))``. Ranges do not overlap, so no sample is read
twice in an epoch and none is in one global batch twice; every reader yields exactly ``Q /
batch_size`` batches, so every process takes the same number of steps per epoch (uneven shards
cannot hang a rank) and epochs begin at the same step everywhere. What is left over, fewer than
``slots x batch_size`` samples at the end of the epoch's order (a different tail each epoch), is
not read in that epoch. A range may begin or end inside a shard: the reader starts at that
sample (local files: by reading tar headers only) or stops there.

Without counts (``pipe:`` URLs, or ``http(s)`` shards without a ``manifest.json`` beside them):
whole shards, the epoch's ``k``-th shard to reader ``k mod slots``, ``floor(S / slots)`` each;
the ``S mod slots`` last shards of the epoch's order are not read in that epoch. Readers then
yield equal batch counts only when the shards hold equal numbers of samples; otherwise some
processes begin the next epoch a few steps earlier (never a hang: the stream is endless).

**Position.** Samples are shuffled in consecutive blocks of ``shuffle_buffer`` (a permutation
seeded by ``(seed, epoch, slot, block)``). A reader's position is ``{epoch, block, seg, offset,
taken}``: the block being delivered begins at sample ``offset`` of its ``seg``-th segment, and
``taken`` of its samples are delivered. A restarted reader reads that block again, drops the
``taken`` first, and goes on: the same sequence as without the restart, reading at most one block
again. :class:`LoaderState` holds the positions of one process's readers, and the count of
batches it delivered, which sets where PyTorch's round-robin over workers resumes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SAMPLINGS",
    "LoaderState",
    "Segment",
    "epoch_order",
    "mix_seed",
    "reader_segments",
    "start_position",
]

SAMPLINGS = ("epoch", "resampled")
STATE_FORMAT = 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, the same in every process (``hash`` of a str is not)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True)
class Segment:
    """Samples ``[start, stop)`` (``stop`` None: to its end) of shard ``shard``, ``order_index``-th in its epoch."""

    shard: int
    order_index: int
    start: int = 0
    stop: int | None = None


def epoch_order(num_shards: int, *, seed: int, epoch: int, sampling: str) -> list[int]:
    """Shard indices in the order epoch ``epoch`` reads them (module docstring)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    rng = random.Random(mix_seed(seed, epoch, 0x5A3D))
    if sampling == "resampled":
        return [rng.randrange(num_shards) for _ in range(num_shards)]
    order = list(range(num_shards))
    rng.shuffle(order)
    return order


def per_reader_quota(total: int, *, slots: int, batch_size: int) -> int:
    """Samples each reader takes from an epoch of ``total`` samples: whole batches, equal for all."""
    return batch_size * (total // (slots * batch_size))


def reader_segments(
    order: Sequence[int],
    sizes: Sequence[int] | None,
    *,
    slot: int,
    slots: int,
    batch_size: int,
) -> list[Segment]:
    """The segments reader ``slot`` of ``slots`` reads in an epoch with shard order ``order``.

    Raises:
        ValueError: the epoch holds too few samples (or, without counts, too few shards) for
            every reader to get one batch.
    """
    if sizes is None:
        per = len(order) // slots
        if per == 0:
            raise ValueError(f"{len(order)} shard(s) for {slots} readers (processes x loader workers), and their "
                             "sample counts are unknown (no manifest.json): each reader needs a whole shard; use "
                             "more shards or fewer workers, or put a manifest.json beside the shards")
        return [Segment(order[k], k) for k in range(slot, per * slots, slots)]
    total = sum(sizes[i] for i in order)
    quota = per_reader_quota(total, slots=slots, batch_size=batch_size)
    if quota == 0:
        raise ValueError(f"an epoch holds {total} samples, fewer than one batch of {batch_size} for each of "
                         f"{slots} readers (processes x loader workers); use fewer workers or a smaller batch")
    low, high = slot * quota, (slot + 1) * quota
    segments, begin = [], 0
    for k, shard in enumerate(order):
        end = begin + sizes[shard]
        if end > low and begin < high and end > begin:
            segments.append(Segment(shard, k, max(low - begin, 0), min(high, end) - begin))
        if end >= high:
            break
        begin = end
    return segments


def start_position(epoch: int) -> dict[str, int]:
    """A reader's position at the start of ``epoch``."""
    return {"epoch": epoch, "block": 0, "seg": 0, "offset": 0, "taken": 0}


@dataclass
class LoaderState:
    """Where one process's training stream stands: per reader role, and batches delivered.

    ``signature`` names what the positions depend on (sampling, seed, shard count, counts known,
    process count and rank, workers, batch size, shuffle block): a state is only restored into a
    loader with the same signature.
    """

    signature: dict[str, Any]
    positions: list[dict[str, int]]
    batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "signature": dict(self.signature), "batches": self.batches,
                "positions": [dict(p) for p in self.positions]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoaderState:
        """Raises ValueError for anything but a state written by :meth:`to_dict`."""
        try:
            if data["format"] != STATE_FORMAT:
                raise ValueError(f"loader state format {data['format']!r}, expected {STATE_FORMAT}")
            positions = [{k: int(p[k]) for k in ("epoch", "block", "seg", "offset", "taken")}
                         for p in data["positions"]]
            return cls(dict(data["signature"]), positions, int(data["batches"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a loader state ({type(err).__name__}: {err})") from None

    def mismatch(self, signature: Mapping[str, Any]) -> str | None:
        """What differs from ``signature`` (None when the state fits), in words."""
        diffs = [f"{key} {self.signature.get(key)!r} -> {signature.get(key)!r}"
                 for key in sorted(set(self.signature) | set(signature))
                 if self.signature.get(key) != signature.get(key)]
        return "; ".join(diffs) or None

    def epoch(self) -> int:
        """The earliest epoch any reader is in."""
        return min(p["epoch"] for p in self.positions)
