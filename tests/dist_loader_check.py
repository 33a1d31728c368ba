"""Two real ranks reading one shard set; run by ``tests/test_loader.py`` as::

    accelerate launch --multi_gpu --num_processes 2 ... tests/dist_loader_check.py WORLD_DIR OUT_DIR

Each rank initialises the gloo group through ``Accelerator(cpu=True)``, then removes ``RANK`` /
``WORLD_SIZE`` from its environment, so the loader can only learn its rank from the
torch.distributed group (as when a process group is set up without a launcher's variables).
Every loader uses one DataLoader worker started with ``spawn`` (the default on macOS and
Windows), where the process group does not exist: ``wds.split_by_node`` evaluated in such a worker
would give every rank every shard. Writes ``OUT_DIR/rank{r}.json`` with the keys each mode yielded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.multiprocessing
from accelerate import Accelerator

from anchorbind.data.loader import build_loader
from tests.data_utils import processors


def keys_of(loader, limit: int | None = None) -> list[str]:
    out: list[str] = []
    for batch in loader:
        out.extend(batch["__key__"])
        if limit is not None and len(out) >= limit:
            break
    return out


def main() -> None:
    world, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.multiprocessing.set_start_method("spawn", force=True)
    accelerator = Accelerator(cpu=True)
    removed = os.environ.pop("RANK", None) is not None and os.environ.pop("WORLD_SIZE", None) is not None
    text = {"text": processors()["text"]}
    common = {"batch_size": 4, "num_workers": 1}
    result = {
        "world_size": accelerator.num_processes,
        "env_rank_removed": removed,
        "eval": keys_of(build_loader(str(world / "test"), text, train=False, **common)),
        "epoch": keys_of(build_loader(str(world / "train"), text, train=True, resampled=False, shuffle_buffer=8,
                                      seed=3, **common)),
        "resampled": keys_of(build_loader(str(world / "train"), text, train=True, shuffle_buffer=8, seed=3, **common),
                             limit=96),
    }
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
