"""Two real ranks reading two epochs; run by ``tests/test_sampler.py`` as::

    accelerate launch --multi_gpu --num_processes 2 ... tests/dist_sampler_check.py SHARD_DIR OUT_DIR

Each rank initialises the gloo group through ``Accelerator(cpu=True)`` and removes ``RANK`` /
``WORLD_SIZE``, so the loader learns its rank from the process group only; DataLoader workers
are started with ``spawn``. Writes ``OUT_DIR/rank{r}.json``: ``straight`` (the batches' keys of two
epochs), ``head`` (the first 21 batches) and ``tail`` (the rest, from a loader built with the
state saved after ``head``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.multiprocessing
from accelerate import Accelerator

from anchorbind.data.loader import build_loader
from tests.stream_utils import PROCESSORS, batches_of

CUT = 21


def main() -> None:
    shards, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.multiprocessing.set_start_method("spawn", force=True)
    accelerator = Accelerator(cpu=True)
    os.environ.pop("RANK", None)
    os.environ.pop("WORLD_SIZE", None)
    common = {"train": True, "batch_size": 16, "num_workers": 2, "shuffle_buffer": 40, "seed": 7, "epochs": 2}
    straight = batches_of(build_loader(str(shards), PROCESSORS, **common))
    first = build_loader(str(shards), PROCESSORS, **common)
    head = batches_of(first, CUT)
    state = json.loads(json.dumps(first.state_dict()))
    tail = batches_of(build_loader(str(shards), PROCESSORS, state=state, **common))
    result = {"world_size": accelerator.num_processes, "straight": straight, "head": head, "tail": tail}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
