"""Helpers for the sampler and streaming tests: caption shards written by the project's writer,
a processor that decodes nothing but the caption, and local HTTP servers (working, stalled, dead)."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from anchorbind.pipelines.shards.writer import finish_entry, shard_name, write_manifest, write_shard


class CaptionProcessor:
    """A real processor's interface (``sample_keys``, ``load``, ``collate``), decoding only the caption."""

    sample_keys = ("txt",)

    def load(self, source: Any, train: bool = False) -> str:
        return bytes(source).decode()

    def collate(self, items: list[str]) -> list[str]:
        return list(items)


class RandomProcessor(CaptionProcessor):
    """Returns a number drawn from torch's RNG: what an augmentation draws for the sample."""

    def load(self, source: Any, train: bool = False) -> float:
        return float(torch.rand(()))


PROCESSORS = {"caption": CaptionProcessor()}


def write_caption_shards(out: Path, sizes: Sequence[int], *, manifest: bool = True, prefix: str = "cap") -> list[str]:
    """Shards of ``sizes[i]`` samples (a caption each) named ``{prefix}-00000i.tar``; their paths.

    Keys are ``s{shard}_{index}``, unique over the set."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, count in enumerate(sizes):
        samples = [{"__key__": f"s{i:03d}_{j:04d}", "txt": f"caption {j} of shard {i}".encode()} for j in range(count)]
        entries.append(finish_entry(write_shard(out / shard_name(prefix, i), samples)))
    if manifest:
        write_manifest(out, entries, created_by="tests")
    return [str(out / e["name"]) for e in entries]


def all_keys(sizes: Sequence[int]) -> list[str]:
    return sorted(f"s{i:03d}_{j:04d}" for i, count in enumerate(sizes) for j in range(count))


def batches_of(loader: Any, limit: int | None = None) -> list[list[str]]:
    out = []
    for batch in loader:
        out.append(list(batch["__key__"]))
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------------------ servers
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 from a thread; yields the base URL. Stopped on exit."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def stalled_server() -> Iterator[str]:
    """A server that accepts connections and never sends a byte; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def dead_url() -> str:
    """The base URL of a port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
