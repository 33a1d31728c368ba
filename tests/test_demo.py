"""``anchorbind demo`` end to end at a tiny size: every stage runs and the outputs are complete."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    """From a directory outside the checkout: the demo uses the packaged config."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "anchorbind", "demo", "--out", str(out), "--train-scenes", "96",
               "--test-scenes", "64", "--steps", "4", "--workers", "1"]
    env = subprocess_env(OMP_NUM_THREADS="2")
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for run in ("bind", "direct", "bind_mitigated"):
        assert (out / run / "model" / "config.json").is_file(), run
    metrics = json.loads((out / "bind" / "metrics.json").read_text())
    assert metrics["retrieval"]["text->audio"]["kind"] == "emergent"
    assert "text->audio" in metrics["emergent_vs_direct"]
    assert str(out / "bind_mitigated") in metrics["compare"]
    assert (out / "bind" / "report.md").is_file()
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["report"] == str(out / "bind" / "report.md")
    assert "emergent text->audio category R@1" in done.stdout and "report:" in done.stdout

    # the quality bench reads the demo's evaluation (targets need the full-size demo)
    bench = subprocess.run([sys.executable, str(REPO / "bench" / "bench_demo_quality.py"), str(out)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert bench.returncode in (0, 1), bench.stderr[-2000:]
    assert "emergent_over_direct" in json.loads(bench.stdout)

    # rerunning skips every finished stage
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("already trained, skipping") == 3
