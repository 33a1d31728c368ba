"""A scale-out rehearsal: two accelerate "nodes" on 127.0.0.1 streaming shards from an HTTP server.

Each node is its own ``accelerate launch --num_machines 2 --machine_rank R`` (one gloo process
each), as on two machines; the shards come only over HTTP from a server this test starts and
stops; the run is resumed on both nodes; and a server that accepts connections but never answers
stops both nodes within a bounded time instead of freezing them.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.stream_utils import http_server, stalled_server
from tests.test_shared_state import two_nodes
from tests.train_utils import tiny_config, write_config


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_stream_over_http_resume_and_stop_on_a_stalled_server(tmp_path, world_dir):
    run = tmp_path / "run"
    cfg = tiny_config(run, world_dir / "train", ["steps=2", "checkpoint_every=2", "log_every=1",
                                                 "data.read_timeout_s=3", "data.retries=1",
                                                 "data.retry_backoff_s=0.1", "data.batch_timeout_s=60",
                                                 "dist_timeout_s=120"])
    with http_server(world_dir) as base:
        count = len(list((world_dir / "train").glob("world-*.tar")))
        spec = f"train/world-{{000000..{count - 1:06d}}}.tar"  # brace notation, as for a bucket
        cfg["data"]["train_shards"] = f"{base}/{spec}"
        config = write_config(tmp_path / "http.yaml", cfg)
        (code0, out0), (code1, out1) = two_nodes(config, (run, run), timeout=600)
        assert code0 == 0 and code1 == 0, (out0[-3000:], out1[-3000:])
        first = json.loads((run / "train_summary.json").read_text())
        assert first["step"] == 2 and first["processes"] == 2

        # resumed on both nodes: the loader continues where the checkpoint left it
        (code0, out0), (code1, out1) = two_nodes(config, (run, run), "--resume", "--set", "steps=4", timeout=600)
        assert code0 == 0 and code1 == 0, (out0[-3000:], out1[-3000:])
        assert "restart" not in (out0 + out1).lower(), "the data order continued, it did not restart"
        resumed = json.loads((run / "train_summary.json").read_text())
        assert resumed["step"] == 4 and resumed["samples"] == 2 * first["samples"]
        rows = [line for line in (run / "train_log.csv").read_text().splitlines()[1:] if line.strip()]
        assert len(rows) == 4, "each step logged once, none repeated by the resume"

    with stalled_server() as base:
        stalled = dict(cfg, output_dir=str(tmp_path / "stalled"))
        stalled["data"] = dict(cfg["data"], train_shards=f"{base}/{spec}", max_failed_shards=0)
        config = write_config(tmp_path / "stalled.yaml", stalled)
        start = time.monotonic()
        stalled_run = tmp_path / "stalled"
        (code0, out0), (code1, out1) = two_nodes(config, (stalled_run, stalled_run), timeout=600)
        elapsed = time.monotonic() - start
    assert code0 != 0 and code1 != 0, (out0[-3000:], out1[-3000:])
    assert elapsed < 300, f"a stalled server froze the nodes for {elapsed:.0f} s"
    assert "127.0.0.1" in out0 + out1, "the error names the URL"
