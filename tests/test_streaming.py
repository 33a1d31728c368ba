"""Robust streaming: shards over HTTP and ``pipe:``, stalled and dead sources skipped or stopped in
bounded time, retries with backoff, the batch watchdog (docs/reliability.md, Streaming)."""

from __future__ import annotations

import http.server
import logging
import re
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from anchorbind.data.loader import build_loader
from anchorbind.data.shardlist import iter_shard, shard_sizes
from anchorbind.data.streaming import ShardUnreadable, StreamOptions, open_source, shard_samples
from anchorbind.errors import InputError
from anchorbind.train.watchdog import WATCHDOG_SIGNAL, BatchWatchdog, DataStallError, process_group_kwargs
from tests.stream_utils import (
    PROCESSORS,
    all_keys,
    batches_of,
    dead_url,
    http_server,
    stalled_server,
    write_caption_shards,
)

SIZES = [24, 24, 24, 24]
FAST = {"retries": 1, "retry_backoff_s": 0.05}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("served") / "train"
    write_caption_shards(out, SIZES)
    return out


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["__key__"]]


def errors(batches) -> list[dict]:
    return [e for b in batches for e in b["errors"]]


def eval_loader(urls, **stream):
    return build_loader(urls, PROCESSORS, train=False, batch_size=8, num_workers=0, stream=StreamOptions(**stream))


# ------------------------------------------------------------------------------ HTTP and pipe:
def test_shards_served_over_http_read_like_local_ones(shard_dir):
    local = sorted(str(p) for p in shard_dir.glob("*.tar"))
    with http_server(shard_dir) as base:
        urls = [f"{base}/{Path(p).name}" for p in local]
        assert keys(eval_loader(urls)) == keys(eval_loader(local)) == all_keys(SIZES)
        # sample counts from the manifest.json served beside the shards: the same epoch split as local
        assert shard_sizes(urls) == SIZES
        over_http = batches_of(build_loader(urls, PROCESSORS, train=True, batch_size=8, num_workers=2,
                                            shuffle_buffer=16, epochs=2))
    on_disk = batches_of(build_loader(local, PROCESSORS, train=True, batch_size=8, num_workers=2, shuffle_buffer=16,
                                      epochs=2))
    assert over_http == on_disk and len(over_http) == 2 * 96 // 8


def test_pipe_commands_and_iter_shard(shard_dir):
    shard = sorted(shard_dir.glob("*.tar"))[0]
    assert [s["__key__"] for s in iter_shard(f"pipe:cat {shard}")] == [s["__key__"] for s in iter_shard(shard)]
    started = time.monotonic()
    with pytest.raises(ShardUnreadable, match=r"no data for 0\.5 s .*2 attempts"):
        list(iter_shard("pipe:sleep 30", StreamOptions(read_timeout_s=0.5, **FAST)))
    assert time.monotonic() - started < 15, "a silent command is given up after its read timeout"
    with pytest.raises(ShardUnreadable, match=r"exited with status 1: cat: .*nowhere.tar: No such file.*2 attempts"):
        list(iter_shard("pipe:cat /nowhere.tar", StreamOptions(**FAST)))


class _DroppingHandler(http.server.SimpleHTTPRequestHandler):
    """Sends the first 20 kB of a file and closes the connection, once per file; whole files after."""

    dropped: ClassVar[set[str]] = set()
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        with self.lock:
            first = self.path not in self.dropped
            self.dropped.add(self.path)
        if first:
            outputfile.write(source.read(20_000))
            outputfile.flush()
            self.close_connection = True
            return
        super().copyfile(source, outputfile)


def test_a_connection_lost_mid_shard_resumes_at_the_next_sample(shard_dir, tmp_path):
    import functools

    big = write_caption_shards(tmp_path / "big", [300], manifest=False)[0]  # ~300 kB: cut after 20 kB
    handler = functools.partial(_DroppingHandler, directory=str(tmp_path / "big"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{Path(big).name}"
        got = [index for index, _ in shard_samples(url, StreamOptions(**FAST), handler=lambda exn: True)]
    finally:
        server.shutdown()
        server.server_close()
    assert got == list(range(300)), "every sample once: the retry skipped what the first attempt delivered"


# ------------------------------------------------------------------------------ stalled and dead
def test_a_stalled_server_is_skipped_and_counted_in_bounded_time(shard_dir):
    good = str(sorted(shard_dir.glob("*.tar"))[0])
    with stalled_server() as base:
        stalled = f"{base}/cap-000001.tar"
        started = time.monotonic()
        batches = list(eval_loader([stalled, good], read_timeout_s=1.0, **FAST))
        elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 15, f"two attempts of 1 s each, then skipped: {elapsed:.1f} s"
    assert keys(batches) == all_keys(SIZES[:1])
    (error,) = errors(batches)
    assert error["url"] == stalled and error["key"] is None
    assert error["reason"] == "shard skipped: no response for 1 s (data.read_timeout_s) (2 attempts)"


def test_a_stalled_server_past_the_limit_is_a_clear_error_in_bounded_time():
    with stalled_server() as base:
        urls = [f"{base}/cap-{i:06d}.tar" for i in range(4)]
        loader = build_loader(urls, PROCESSORS, train=True, batch_size=4, num_workers=2,
                              stream=StreamOptions(read_timeout_s=1.0, retries=0, max_failed_shards=1))
        started = time.monotonic()
        with pytest.raises(InputError, match=r"^input '[^']+': \d shards could not be read \(more than "
                                             r"data\.max_failed_shards=1\); gave up on: http://127\.0\.0\.1:\d+/"
                                             r"cap-00000\d\.tar \(no response for 1 s[^\n]*$"):
            next(iter(loader))
        elapsed = time.monotonic() - started
    assert elapsed < 20, f"4 stalled shards over 2 workers, 1 s each: {elapsed:.1f} s"


def test_a_dead_server_backs_off_then_stops_at_the_limit(caplog):
    caplog.set_level(logging.WARNING, logger="anchorbind.data")
    url = f"{dead_url()}/cap-000000.tar"
    options = StreamOptions(read_timeout_s=2.0, retries=3, retry_backoff_s=0.2, max_failed_shards=0)
    loader = build_loader([url], PROCESSORS, train=True, batch_size=4, num_workers=0, stream=options)
    started = time.monotonic()
    with pytest.raises(InputError, match=r"1 shards could not be read \(more than data\.max_failed_shards=0\); "
                                         r"gave up on: http://127\.0\.0\.1:\d+/cap-000000\.tar \(cannot connect"):
        next(iter(loader))
    elapsed = time.monotonic() - started
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [re.search(r"retry (\d) of 3", r.getMessage()).group(1) for r in retries] == ["1", "2", "3"]
    assert all(url in r.getMessage() and "cannot connect" in r.getMessage() for r in retries)
    delays = [float(re.search(r"in ([\d.]+) s", r.getMessage()).group(1)) for r in retries]
    for delay, full in zip(delays, (0.2, 0.4, 0.8), strict=True):
        assert 0.75 * full - 0.05 <= delay <= full + 0.05, f"exponential backoff, jittered by up to 25%: {delays}"
    # the waits really happen (a lower bound holds however loaded the machine is)
    assert sum(delays) - 0.1 <= elapsed < 20, f"backoff, not ~500 instant retries: {elapsed:.1f} s"
    assert "giving up shard" in caplog.text


def test_a_missing_file_or_http_404_is_not_retried(shard_dir, tmp_path):
    with http_server(shard_dir) as base, pytest.raises(ShardUnreadable, match=r"HTTP 404 .*\(1 attempt\)"):
        list(iter_shard(f"{base}/nothing.tar", StreamOptions(retries=5, retry_backoff_s=10)))
    with pytest.raises(ShardUnreadable, match=r"cannot open .*\(1 attempt\)"):
        list(iter_shard(tmp_path / "gone.tar", StreamOptions(retries=5, retry_backoff_s=10)))


def test_local_skips_read_headers_only_and_match_a_full_read(shard_dir):
    shard = str(sorted(shard_dir.glob("*.tar"))[2])
    whole = [(i, s["__key__"]) for i, s in shard_samples(shard, handler=lambda e: True)]
    for start, stop in ((0, 24), (5, 9), (23, None), (24, None)):
        part = [(i, s["__key__"]) for i, s in shard_samples(shard, start=start, stop=stop, handler=lambda e: True)]
        assert part == whole[start:stop]
        piped = [(i, s["__key__"]) for i, s in shard_samples(f"pipe:cat {shard}", start=start, stop=stop,
                                                               handler=lambda e: True)]
        assert piped == part
    with open_source(shard) as handle:
        assert handle.read(4)


# ------------------------------------------------------------------------------ the watchdog
@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_batch_watchdog_turns_a_hang_into_an_error(num_workers):
    """A source that never sends and has no read timeout: the loader would wait forever."""
    loader = build_loader(["pipe:sleep 30"], PROCESSORS, train=False, batch_size=4, num_workers=num_workers,
                          stream=StreamOptions(read_timeout_s=None))
    batches = iter(loader)
    with BatchWatchdog(1.5, describe=lambda: "reading pipe:sleep 30") as watchdog:
        started = time.monotonic()
        stall = r"no batch for 1\.5 s while waiting for batch 1 .*pipe:sleep 30"
        with pytest.raises(DataStallError, match=stall), watchdog.waiting("batch 1"):
            next(batches)
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 15, elapsed
        # a wait that ends in time raises nothing, and nothing fires afterwards
        with watchdog.waiting("a quick one"):
            time.sleep(0.05)
        time.sleep(2)
    del batches


def test_a_watchdog_signal_outside_a_wait_is_ignored_and_the_handler_restored():
    import signal

    before = signal.getsignal(WATCHDOG_SIGNAL)
    with BatchWatchdog(5.0) as watchdog:
        with watchdog.waiting("x"):
            pass
        signal.raise_signal(WATCHDOG_SIGNAL)  # no stall pending: ignored
    assert signal.getsignal(WATCHDOG_SIGNAL) == before
    with BatchWatchdog(None).waiting("disabled"):
        pass


def test_the_distributed_timeout_reaches_accelerate():
    (handler,) = process_group_kwargs(42)
    assert handler.timeout.total_seconds() == 42 and handler.to_kwargs()["timeout"].total_seconds() == 42
    assert process_group_kwargs(None) == []


# ------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_training_on_a_stalled_server_stops_in_bounded_time(tmp_path, world_dir):
    """No read timeout (data.read_timeout_s: null): the batch watchdog stops the run; with one, the
    stalled shards are skipped, counted and past data.max_failed_shards stop it, naming them."""
    from anchorbind.train.config import load_train_config
    from anchorbind.train.loop import train
    from tests.train_utils import tiny_config, write_config

    with stalled_server() as base:
        shards = f"{base}/world-{{000000..000002}}.tar"
        for name, overrides, error in (
            ("watchdog", ["data.read_timeout_s=null", "data.batch_timeout_s=2", "data.retries=0"], DataStallError),
            ("limit", ["data.read_timeout_s=1", "data.retries=0", "data.max_failed_shards=1"], InputError),
        ):
            cfg = tiny_config(tmp_path / name, world_dir / "train", [f"data.train_shards={shards}", "steps=2",
                                                                     *overrides])
            config = load_train_config(write_config(tmp_path / f"{name}.yaml", cfg))
            started = time.monotonic()
            with pytest.raises(error, match=r"data\.batch_timeout_s|max_failed_shards=1"):
                train(config)
            assert time.monotonic() - started < 60, name  # the model build included
