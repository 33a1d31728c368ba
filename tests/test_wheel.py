"""The built wheel, installed outside the checkout, is the whole tool.

Builds the wheel from a copy of the source tree, checks that it holds one top-level import package
(``anchorbind``) with its configs, installs it into a fresh virtual environment and, from an empty
directory, runs ``python -c "import anchorbind"``, a tiny world -> train (2 steps, the packaged
``demo`` config by name) -> eval -> embed, and a tiny ``anchorbind demo``, with the venv's own
``anchorbind`` script.

The venv sees the heavy dependencies (torch, transformers, …) through ``--system-site-packages``
so the test needs no network; every child checks that ``anchorbind`` itself is imported from the
venv, never from this checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SOURCE_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                       ".ruff_cache", "runs", "out", "demo_out", "tests", "docs", "bench")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(REPO, work / "src", ignore=SOURCE_IGNORE)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-w", str(work / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("anchorbind-*.whl")
    return built


def test_wheel_holds_only_the_anchorbind_package_and_its_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"anchorbind"}, f"top-level entries besides anchorbind: {sorted(top_level)}"
    for required in ("anchorbind/configs/demo.yaml", "anchorbind/configs/base.yaml",
                     "anchorbind/configs/accelerate/multi_gpu.yaml", "anchorbind/modalities/text/plugin.py",
                     "anchorbind/pipelines/demo.py", "anchorbind/train/__main__.py", "anchorbind/py.typed"):
        assert required in names, required
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "anchorbind = anchorbind.cli:main" in text
    assert "text = anchorbind.modalities.text:TextPlugin" in text


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True, timeout=300)
    done = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def run(venv: Path, *args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in __import__("os").environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2",
               PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def test_installed_wheel_imports_from_the_venv_only(venv, tmp_path):
    done = run(venv, str(venv / "bin" / "python"), "-c",
               "import json, anchorbind, anchorbind.train, anchorbind.modalities.text, anchorbind.pipelines.demo\n"
               "from anchorbind.config import resolve_config\n"
               "from anchorbind.registry import list_modalities\n"
               "print(json.dumps({'file': anchorbind.__file__, 'demo': str(resolve_config('demo')),"
               " 'modalities': list_modalities()}))", cwd=tmp_path)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).is_relative_to(venv), info
    assert Path(info["demo"]).is_relative_to(venv), info
    assert {"text", "audio", "depth"} <= set(info["modalities"])
    for name in ("bind", "modalities", "pipelines"):
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {name}"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
        assert probe.returncode != 0, f"`import {name}` works in the venv: the wheel leaks a top-level package"


def test_world_train_eval_embed_from_an_empty_directory(venv, tmp_path):
    cli = str(venv / "bin" / "anchorbind")
    run(venv, cli, "world", "--out", "world", "--train", "16", "--test", "16", "--shard-size", "16",
        "--workers", "1", cwd=tmp_path)
    run(venv, cli, "train", "--config", "demo", "--output-dir", "run",
        "--set", "steps=2", "--set", "checkpoint_every=2", "--set", "log_every=1",
        "--set", "data.train_shards=world/train", "--set", "data.eval_shards=world/test",
        "--set", "data.batch_size=8", "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=8",
        "--set", "data.anchor=live", "--set", "model.anchor.image_size=64",
        "--set", "model.modalities.depth.image_size=32", cwd=tmp_path)
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    run(venv, cli, "eval", "run", "--shards", "world/test", "--num-workers", "0", "--checkpoint-samples", "0",
        cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "text->audio" in metrics["retrieval"]
    run(venv, cli, "embed", "run/model", "--modality", "text", "a red cube", "a dog barking",
        "--out", "emb.safetensors", cwd=tmp_path)
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "emb.safetensors"))["embeddings"].shape[0] == 2


def test_demo_runs_every_stage_and_resumes_from_the_installed_wheel(venv, tmp_path):
    """``anchorbind demo`` of the installed wheel, from an empty directory: the packaged config, every
    stage, the quality bench reading its output, and a rerun that skips every finished stage."""
    out = tmp_path / "demo"
    command = [str(venv / "bin" / "anchorbind"), "demo", "--out", str(out), "--train-scenes", "96",
               "--test-scenes", "64", "--steps", "4", "--workers", "1"]
    done = run(venv, *command, cwd=tmp_path)
    for name in ("bind", "direct", "bind_mitigated"):
        assert (out / name / "model" / "config.json").is_file(), name
    metrics = json.loads((out / "bind" / "metrics.json").read_text())
    assert metrics["retrieval"]["text->audio"]["kind"] == "emergent"
    assert "text->audio" in metrics["emergent_vs_direct"]
    assert str(out / "bind_mitigated") in metrics["compare"]
    assert (out / "bind" / "report.md").is_file()
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["report"] == str(out / "bind" / "report.md")
    timings = summary["timings_s"]  # the demo's own per-stage measurement
    stages = ("world", "anchor_cache", "train_bind", "train_direct", "train_mitigated", "eval_mitigated",
              "eval_bind", "report")
    assert list(timings) == [*stages, "total"] and all(timings[s] > 0 for s in stages)
    assert abs(timings["total"] - sum(timings[s] for s in stages)) < 0.05
    assert "seconds per stage: world" in done.stdout
    assert "emergent text->audio category R@1" in done.stdout and "report:" in done.stdout

    # the quality bench reads the demo's evaluation (targets need the full-size demo)
    bench = subprocess.run([str(venv / "bin" / "python"), str(REPO / "bench" / "bench_demo_quality.py"), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert bench.returncode in (0, 1), bench.stderr[-2000:]
    assert "emergent_over_direct" in json.loads(bench.stdout)

    # rerunning skips every finished stage
    again = run(venv, *command, cwd=tmp_path)
    assert again.stdout.count("already trained, skipping") == 3
    assert again.stdout.count("already evaluated, skipping") == 2
    assert json.loads((out / "demo_summary.json").read_text())["headline"].keys() == summary["headline"].keys()
