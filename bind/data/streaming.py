"""Reading one shard robustly, whatever serves it: timeouts, bounded retries with backoff, skipping.

Every shard the loader reads goes through :func:`shard_samples`:

- **local files** (``/data/train-000001.tar``, ``file://``) are opened directly; a sample offset
  is reached by reading tar headers only (no member data);
- ``http://`` / ``https://`` are read by Python's ``urllib`` with a socket timeout of
  ``read_timeout_s`` on the connection and on every read (webdataset's default, ``curl`` with
  thirty quick retries and no read timeout, is not used);
- ``pipe:COMMAND`` runs ``COMMAND`` in a shell (object stores: ``pipe:aws s3 cp s3://b/k -``,
  ``pipe:gcloud storage cat gs://b/k``) and reads its standard output; no byte for
  ``read_timeout_s`` ends the attempt (the command's process group is killed), and so does a
  non-zero exit status (the message quotes the end of its standard error);
- any other scheme webdataset opens (``gs://``, ``hf://``, ...) goes through ``webdataset.gopen``;
  when that starts a process, its output is read with the same timeout.

A failed attempt (no data for ``read_timeout_s``, a refused or reset connection, an HTTP status
that may pass: 408, 425, 429, 5xx; a command's non-zero exit) is logged as a warning naming the
URL and retried after ``retry_backoff_s * 2**k`` seconds (k = 0, 1, ...; at most
``max_retry_delay_s``; jittered by up to 25% so that many readers do not retry in step). A retry
resumes at the sample where the failed attempt stopped: samples already delivered are skipped,
none is delivered twice. The retry count restarts whenever an attempt delivered new samples.
A permanent failure (a missing local file, HTTP 4xx) is not retried. After the last attempt
:class:`ShardUnreadable` is raised; the loader records it like a decode error and goes on with
the next shard (:func:`anchorbind.data.stages.read_segments`), up to ``max_failed_shards``.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import io
import logging
import os
import random
import re
import select
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

__all__ = [
    "ShardUnreadable",
    "SourceError",
    "StreamOptions",
    "fetch_bytes",
    "open_source",
    "sample_offsets",
    "shard_samples",
]

log = logging.getLogger("anchorbind.data")

_META = re.compile(r"__[^/]*__($|/)")
_RETRYABLE_HTTP = {408, 425, 429}


@dataclass(frozen=True)
class StreamOptions:
    """How shards are read (``data.*`` keys of the training config; defaults documented there).

    Attributes:
        read_timeout_s: an attempt fails when no byte arrives for this long (connecting included);
            ``None`` or 0 waits forever.
        retries: attempts after a failed one (without new samples in between) before the shard
            is given up.
        retry_backoff_s: the first delay before a retry; it doubles at each further retry.
        max_retry_delay_s: the longest delay between two attempts.
        max_failed_shards: shards that may be given up (skipped and counted) per loader before
            the loader raises naming them; ``None`` never raises (evaluation).
    """

    read_timeout_s: float | None = 60.0
    retries: int = 5
    retry_backoff_s: float = 1.0
    max_retry_delay_s: float = 60.0
    max_failed_shards: int | None = None

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), jittered."""
        base = min(self.retry_backoff_s * (2.0 ** retry), self.max_retry_delay_s)
        return base * (0.75 + 0.25 * random.random())

    @property
    def timeout(self) -> float | None:
        return self.read_timeout_s if self.read_timeout_s else None


class SourceError(OSError):
    """One attempt to read a shard failed; ``permanent`` failures are not retried."""

    def __init__(self, url: str, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.url, self.reason, self.permanent = url, reason, permanent

    def __str__(self) -> str:  # webdataset appends to args; the message stays ours
        return f"{self.url}: {self.reason}"


class ShardUnreadable(OSError):
    """A shard could not be read after every attempt (or failed permanently)."""

    def __init__(self, url: str, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.url, self.reason, self.attempts = url, reason, attempts

    def __str__(self) -> str:
        tries = "1 attempt" if self.attempts == 1 else f"{self.attempts} attempts"
        return f"{self.url}: {self.reason} ({tries})"


# ---------------------------------------------------------------------------------- opening
class _ProcessStream(io.RawIOBase):
    """The standard output of a process, read with a timeout; a non-zero exit is an error."""

    def __init__(self, proc: subprocess.Popen, url: str, timeout: float | None, stderr: Any = None) -> None:
        self.proc, self.url, self.timeout, self._stderr = proc, url, timeout, stderr
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._eof:
            return 0
        if self.timeout is not None:
            ready, _, _ = select.select([self._fd], [], [], self.timeout)
            if not ready:
                self._kill()
                raise SourceError(self.url, f"no data for {self.timeout:g} s (data.read_timeout_s)")
        data = os.read(self._fd, len(buffer))
        if not data:
            self._eof = True
            self._check_exit()
            return 0
        buffer[: len(data)] = data
        return len(data)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            text = self._stderr.read()[-400:].decode("utf-8", "replace").strip()
            return f": {' '.join(text.split())}" if text else ""
        return ""

    def _check_exit(self) -> None:
        try:
            status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise SourceError(self.url, f"the command did not exit {self.timeout:g} s after its output ended") from None
        if status != 0:
            raise SourceError(self.url, f"the command exited with status {status}{self._stderr_tail()}")

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def close(self) -> None:
        if not self.closed:
            self._kill()  # stopping early (a segment ends mid-shard): the command is not waited for
            for handle in (self.proc.stdout, self._stderr):
                with contextlib.suppress(OSError):
                    if handle is not None:
                        handle.close()
        super().close()


class _HttpStream(io.RawIOBase):
    """An HTTP response body; socket timeouts and dropped connections become :class:`SourceError`."""

    def __init__(self, response: Any, url: str, timeout: float | None) -> None:
        self.response, self.url, self.timeout = response, url, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            count = self.response.readinto(buffer)
            missing = getattr(self.response, "length", None)
            if count == 0 and len(buffer) and missing:  # http.client does not raise IncompleteRead here
                raise SourceError(self.url, f"connection closed with {missing} bytes of the body missing")
            return count
        except SourceError:
            raise
        except TimeoutError:
            raise SourceError(self.url, f"no data for {self.timeout:g} s (data.read_timeout_s)") from None
        except (OSError, http.client.HTTPException) as err:
            raise SourceError(self.url, f"connection lost ({type(err).__name__}: {err})") from None

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.response.close()
        super().close()


def _open_http(url: str, timeout: float | None) -> BinaryIO:
    request = urllib.request.Request(url, headers={"User-Agent": "anchorbind"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout) if timeout else urllib.request.urlopen(request)
    except urllib.error.HTTPError as err:
        permanent = 400 <= err.code < 500 and err.code not in _RETRYABLE_HTTP
        raise SourceError(url, f"HTTP {err.code} {err.reason}", permanent=permanent) from None
    except TimeoutError:
        raise SourceError(url, f"no response for {timeout:g} s (data.read_timeout_s)") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise SourceError(url, f"no response for {timeout:g} s (data.read_timeout_s)") from None
        raise SourceError(url, f"cannot connect ({reason})") from None
    except (OSError, http.client.HTTPException) as err:
        raise SourceError(url, f"cannot connect ({type(err).__name__}: {err})") from None
    return io.BufferedReader(_HttpStream(response, url, timeout), buffer_size=1 << 20)


def _open_pipe(command: str, url: str, timeout: float | None) -> BinaryIO:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed with the stream
    try:
        proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as err:
        stderr.close()
        raise SourceError(url, f"cannot run the command ({err})") from None
    return io.BufferedReader(_ProcessStream(proc, url, timeout, stderr), buffer_size=1 << 20)


def _local_path(url: str) -> str | None:
    parsed = urlparse(url)
    if url.startswith("pipe:") or (parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file"):
        return None
    return unquote(parsed.path) if parsed.scheme == "file" else url


def _open_local(path: str, url: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        raise SourceError(url, f"cannot open ({err.strerror or err})", permanent=True) from None
    except OSError as err:
        raise SourceError(url, f"cannot open ({err.strerror or err})") from None


def _open_other(url: str, timeout: float | None) -> BinaryIO:
    gopen = importlib.import_module("webdataset.gopen")
    try:
        stream = gopen.gopen(url, "rb")
    except Exception as err:  # no handler for the scheme, a tool missing: retrying will not help
        raise SourceError(url, f"cannot open ({type(err).__name__}: {err})", permanent=True) from None
    proc = getattr(stream, "proc", None)
    if isinstance(proc, subprocess.Popen) and proc.stdout is not None:
        return io.BufferedReader(_ProcessStream(proc, url, timeout), buffer_size=1 << 20)
    return stream


def open_source(url: str, options: StreamOptions | None = None) -> BinaryIO:
    """Open ``url`` for reading with the timeouts of ``options`` (module docstring); one attempt.

    Raises:
        SourceError: the attempt failed (``permanent`` when retrying cannot help).
    """
    options = options or StreamOptions()
    if url.startswith("pipe:"):
        return _open_pipe(url[len("pipe:"):], url, options.timeout)
    path = _local_path(url)
    if path is not None:
        return _open_local(path, url)
    if urlparse(url).scheme in ("http", "https"):
        return _open_http(url, options.timeout)
    return _open_other(url, options.timeout)


def fetch_bytes(url: str, options: StreamOptions | None = None, *, limit: int = 64 << 20) -> bytes:
    """The whole (small) resource at ``url``, read with the timeouts of ``options``; one attempt.

    Raises:
        SourceError: it cannot be read, or holds more than ``limit`` bytes.
    """
    stream = open_source(url, options)
    try:
        data = stream.read(limit + 1)
    finally:
        stream.close()
    if len(data) > limit:
        raise SourceError(url, f"more than {limit} bytes", permanent=True)
    return data


# ---------------------------------------------------------------------------------- samples
def _is_member(info: tarfile.TarInfo) -> bool:
    """The tar members webdataset turns into sample fields (``tar_file_iterator``'s rules)."""
    name = info.name
    if not info.isreg() or name is None:
        return False
    if "/" not in name and name.startswith("__") and name.endswith("__"):
        return False
    return _META.match(name) is None and base_plus_ext(name)[0] is not None


def sample_offsets(path: str | os.PathLike[str], stop: int | None = None) -> list[int]:
    """Byte offsets of the first header of each sample of a local tar (headers only; no member data).

    Samples follow webdataset's grouping (consecutive members sharing a key). With ``stop``, only
    the first ``stop`` offsets are found.

    Raises:
        OSError, tarfile.TarError: the file cannot be read as a tar.
    """
    offsets: list[int] = []
    current: str | None = None
    with tarfile.open(path, "r:") as archive:
        for info in archive:
            if not _is_member(info):
                continue
            key = base_plus_ext(info.name)[0]
            if key != current:
                if stop is not None and len(offsets) >= stop:
                    break
                offsets.append(info.offset)
                current = key
            archive.members = []  # keep memory flat on large shards
    return offsets


def _raise_source_errors(handler: Callable[[Exception], bool]) -> Callable[[Exception], bool]:
    def handle(exn: Exception) -> bool:
        if isinstance(exn, SourceError):
            raise exn
        return handler(exn)

    return handle


def _tar_samples(stream: BinaryIO, url: str, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """webdataset's samples of one tar stream (its member grouping and error handling)."""
    handle = _raise_source_errors(handler)

    def files() -> Iterator[dict[str, Any]]:
        try:
            for member in tar_file_iterator(stream, handler=handle):
                member["__url__"] = url
                yield member
        except SourceError:
            raise
        except Exception as exn:  # a truncated or corrupt archive: webdataset's rule, the shard ends here
            if not handle(exn):
                return

    yield from group_by_keys(files(), handler=handle)


def _open_at(url: str, start: int, options: StreamOptions) -> tuple[BinaryIO, int]:
    """Open ``url``; a local file is positioned at sample ``start`` (returns the index reached)."""
    path = _local_path(url)
    if start > 0 and path is not None:
        try:
            offsets = sample_offsets(path, stop=start + 1)
        except (OSError, tarfile.TarError):
            offsets = []  # read from the beginning: the reader reports what is wrong
        if len(offsets) > start:
            handle = _open_local(path, url)
            handle.seek(offsets[start])
            return handle, start
    return open_source(url, options), 0


def shard_samples(
    url: str,
    options: StreamOptions | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
    handler: Callable[[Exception], bool],
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, sample)`` for samples ``start <= index < stop`` of the shard at ``url``, retrying.

    ``handler`` receives corrupt members and archives (webdataset handler: True goes on). A
    failed attempt is retried from the first sample not yet delivered (module docstring).

    Raises:
        ShardUnreadable: after the last attempt, or a permanent failure.
    """
    options = options or StreamOptions()
    position, failures, attempts = start, 0, 0
    while True:
        stream: BinaryIO | None = None
        attempts += 1
        progressed = False
        try:
            stream, index = _open_at(url, position, options)
            for sample in _tar_samples(stream, url, handler):
                if index >= position:
                    if stop is not None and index >= stop:
                        return
                    yield index, sample
                    position, progressed = index + 1, True
                index += 1
            return
        except SourceError as err:
            if progressed:
                failures = 0
            if err.permanent or failures >= options.retries:
                raise ShardUnreadable(url, err.reason, attempts) from None
            delay = options.delay(failures)
            failures += 1
            log.warning("shard %s: %s; retry %d of %d in %.1f s (at sample %d)", url, err.reason, failures,
                        options.retries, delay, position)
            time.sleep(delay)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()


def is_local(url: str) -> bool:
    """A local file (a path or ``file://``), not a URL read through a network or a command."""
    return _local_path(url) is not None and not url.startswith("pipe:")


def local_path(url: str) -> Path | None:
    path = _local_path(url)
    return Path(path) if path is not None else None
