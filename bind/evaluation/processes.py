"""``anchorbind eval`` under ``accelerate launch`` / ``torchrun``: embed in every process, evaluate in one.

Evaluation is one pass over the test split (embedding, the expensive part) and then analyses that
need every row at once (retrieval over the whole gallery, probes, the gap). Under a launcher
(``WORLD_SIZE > 1``) every process embeds its share of the shards (the evaluation loader splits
them by rank, each sample to exactly one process), the shares are gathered on the main process
(rank 0), and only the main process analyses and writes ``metrics.json``; the others stop once
their share is handed over. An error in any process (a model that a node cannot read, shards it
cannot open) is raised in every process, so none waits forever for the others.

:class:`EvalProcesses` is that coordination (accelerate's ``PartialState`` sets the process group
up: gloo on CPU, NCCL on GPUs, each process on its own GPU); :func:`one_process` lets the main
process carry on alone afterwards (the loader then reads every shard again).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from anchorbind.errors import AnchorBindError, ConfigError, ModelFileError, UnknownModalityError

__all__ = ["EvalProcesses", "launched_processes", "one_process"]

T = TypeVar("T")


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without a launcher)."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


@contextlib.contextmanager
def one_process() -> Iterator[None]:
    """Within: this process reads and evaluates alone (``RANK=0``, ``WORLD_SIZE=1`` for the loader).

    Used by the main process after the process group is gone: the evaluation loader takes its rank
    from the launcher's variables otherwise (:func:`anchorbind.data.shardlist.rank_and_world`) and
    would read only its share of the baselines' and checkpoints' shards.
    """
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _rebuilt(rank: int, host: str, kind: str, text: str) -> BaseException:
    """The error another process raised, as this process raises it (same exit status in the CLI)."""
    message = f"rank {rank} on host {host}: {text}"
    if kind == "config":
        return ConfigError(message)
    if kind == "model":
        return ModelFileError(message)
    if kind == "data":
        return AnchorBindError(message)
    return RuntimeError(f"{message} (a {kind} in that process; rerun with --debug there for its traceback)")


def _kind(err: BaseException) -> str:
    if isinstance(err, ModelFileError):
        return "model"
    if isinstance(err, (ConfigError, UnknownModalityError)):
        return "config"
    if isinstance(err, (AnchorBindError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return "data"
    return type(err).__name__


class EvalProcesses:
    """The launched processes of one evaluation; build it in every process (it joins the process group).

    Attributes:
        rank: this process's index (0: the main process).
        world_size: how many processes there are.
        device: this process's device (its own GPU under a multi-GPU launch, else the CPU).
    """

    def __init__(self) -> None:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes > 1 and not torch.distributed.is_initialized():
            raise ConfigError("this launched program already evaluated once and left its process group; "
                              "evaluate once per launch (anchorbind eval does)")
        self.rank: int = state.process_index
        self.world_size: int = state.num_processes
        self.device: torch.device = state.device
        self.host = socket.gethostname()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _exchange(self, error: BaseException | None) -> None:
        """Every process says whether it failed; a failure anywhere is raised everywhere."""
        from accelerate.utils import gather_object

        report = None if error is None else (_kind(error), _one_line(error))
        reports = gather_object([(self.rank, self.host, report)])
        if error is not None:
            raise error
        for rank, host, failed in sorted(reports, key=lambda r: r[0]):
            if failed is not None:
                raise _rebuilt(rank, host, *failed)

    def everywhere(self, work: Callable[[], T]) -> T:
        """``work()`` in every process; if it raises in any, every process raises (this one's own error,
        or the lowest failing rank's, naming it)."""
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except Exception as err:  # reported to the others below, then raised
            error = err
        self._exchange(error)
        return result  # type: ignore[return-value]

    def main_first(self, work: Callable[[], T]) -> T | None:
        """``work()`` on the main process only, the others waiting; its error is raised in every process.

        Returns ``work()``'s result on the main process, None on the others.
        """
        result: T | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = work()
            except Exception as err:
                error = err
        self._exchange(error)
        return result

    def gather_on_main(self, obj: T) -> list[T] | None:
        """Every process's ``obj``, in rank order, on the main process (None on the others).

        Only the main process receives: an all-gather would hold every share in every process.
        """
        received: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, received, dst=0)
        return received

    def finish(self) -> None:
        """Leave the process group (every process, after the last collective call)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
