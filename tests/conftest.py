"""Shared fixtures: a tiny procedural world written once per test session as real shards."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

# Tests must never reach a model hub, and two CPU cores are shared by everything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest -n N: N test processes share the cores, so each (and every process it starts, through
    # the environment) gets its share of threads; more threads than cores make OpenMP and BLAS
    # workers spin against each other
    _THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(min(_THREADS, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` (48 scenes) and ``test/`` (32 scenes) shards of 16 samples, seed 0."""
    from anchorbind.pipelines.shards.world import write_world_shards

    out = tmp_path_factory.mktemp("world")
    write_world_shards(out, train=48, test=32, seed=0, shard_size=16, workers=1)
    return out


def subprocess_env(*extra_paths: str | Path, **variables: str) -> dict[str, str]:
    """The environment for a child interpreter: the installed ``anchorbind``, plus ``extra_paths``.

    Children import the package the way a user's interpreter does, through the install (the
    ``package-dir`` mapping makes the checkout itself unimportable as ``anchorbind``);
    :func:`pytest_sessionstart` checks that the installed package is this checkout.
    """
    paths = [*(str(p) for p in extra_paths), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, **variables}
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    return env


LONGEST_MODULES = ("test_wheel", "test_rehearsal", "test_shared_state", "test_train_faults", "test_loader",
                   "test_sampler", "test_accelerate_settings", "test_evaluate")
"""Modules holding the longest end-to-end tests (``--durations``), collected first: ``pytest -n``
hands whole modules to workers in collection order, so the long ones start at once and the
short ones fill in beside them, instead of one long module running alone at the end."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: every module keeps its own order


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test another copy: ``anchorbind`` must be this checkout, installed editable."""
    import anchorbind

    installed = Path(anchorbind.__file__).resolve().parent
    if installed != REPO / "bind":
        raise pytest.UsageError(
            f"the installed anchorbind is {installed}, not this checkout's bind/: run "
            f"`pip install -c constraints.txt -e \".[dev]\"` in {REPO}"
        )


def free_port() -> int:
    """A TCP port free on localhost, for accelerate's rendezvous in multi-process tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
