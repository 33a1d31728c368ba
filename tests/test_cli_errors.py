"""The CLI's error convention: a user mistake is one line naming the input and the reason, exit 2
for usage/config and 1 for data, no traceback unless ``--debug`` or ``ANCHORBIND_DEBUG=1``.

Every case runs the installed ``anchorbind`` console script as a subprocess, as a user would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anchorbind import BindModel
from anchorbind.errors import ConfigError, ModelFileError
from tests.conftest import subprocess_env

SMALL = {"anchor": {"weights": "none", "image_size": 64},
         "modalities": {"depth": {"image_size": 32, "width": 32, "depth": 1, "num_heads": 2}}}


def anchorbind(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("anchorbind")
    assert exe, "the anchorbind console script is not installed"
    return subprocess.run([exe, *args], cwd=cwd, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=300)


class Done:
    """What a subprocess run gives, from an in-process :func:`anchorbind.cli.main` call."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Done:
    """``anchorbind ARGS`` in this interpreter (faster than a subprocess), with its output captured."""
    from anchorbind.cli import main as cli_main

    capsys.readouterr()
    code = cli_main(list(args))
    out = capsys.readouterr()
    return Done(code, out.out, out.err)


def save_small_model(out: Path) -> Path:
    """The seeded :data:`SMALL` model saved with ``save_pretrained`` at ``out``."""
    torch.manual_seed(0)
    BindModel.from_config(SMALL).save_pretrained(out)
    return out


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_small_model(tmp_path_factory.mktemp("model") / "model")


def test_train_config_mistakes_are_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    # the console script once (its stderr, its exit code); the other mistakes through the same
    # main() in this interpreter, which is what the script calls
    assert_one_line_error(anchorbind("train", "--config", "nope", cwd=tmp_path), 2, "'nope'", "packaged: base, demo")
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--config", "demo", "--set", "optim.lerning_rate=1"], ["lerning_rate"]),
        (["--config", "demo", "--set", "steps"], ["'steps'", "key=value"]),
        (["--config", "demo", "--set", "steps=-3"], ["steps"]),
        (["--config", "demo", "--set", "model.modalities.smell={}"], ["smell", "registered"]),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    cases.append((["--config", str(bad)], ["bad.yaml", "invalid YAML"]))
    for args, needles in cases:
        assert_one_line_error(run_in_process(capsys, "train", *args), 2, *needles)


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    for done in (anchorbind("train", "--config", "nope", "--debug", cwd=tmp_path),
                 anchorbind("train", "--config", "nope", cwd=tmp_path, ANCHORBIND_DEBUG="1")):
        assert done.returncode != 0
        assert "Traceback" in done.stderr and "ConfigError" in done.stderr


def test_embed_with_missing_or_broken_models_is_one_line_with_exit_1(tmp_path, saved_model):
    text = tmp_path / "in.npy"
    done = anchorbind("embed", str(tmp_path / "nowhere"), "--modality", "depth", str(text), "--out",
                      str(tmp_path / "e.safetensors"), cwd=tmp_path)
    assert_one_line_error(done, 1, "nowhere", "no such model folder")

    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    done = anchorbind("embed", str(broken), "--modality", "depth", str(text), "--out", str(tmp_path / "e.st"),
                      cwd=tmp_path)
    assert_one_line_error(done, 1, "model.safetensors", "unreadable safetensors")


def test_from_pretrained_names_the_path_for_every_kind_of_damage(tmp_path, saved_model):
    def damaged(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(saved_model, copy)
        return copy

    bad_json = damaged("bad_json")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"config\.json: unreadable config"):
        BindModel.from_pretrained(bad_json)

    foreign = damaged("foreign")
    (foreign / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not an AnchorBind config"):
        BindModel.from_pretrained(foreign)

    no_weights = damaged("no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="missing weights file"):
        BindModel.from_pretrained(no_weights)

    truncated = damaged("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="unreadable safetensors"):
        BindModel.from_pretrained(truncated)

    shapes = damaged("shapes")
    state = load_file(str(shapes / "model.safetensors"))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(state, str(shapes / "model.safetensors"))
    with pytest.raises(ModelFileError, match="wrong shape"):
        BindModel.from_pretrained(shapes)

    extra = damaged("extra")
    state = load_file(str(extra / "model.safetensors"))
    state["plugins.depth.surprise"] = torch.zeros(1)
    save_file(state, str(extra / "model.safetensors"))
    with pytest.raises(ModelFileError, match="unexpected"):
        BindModel.from_pretrained(extra)

    bad_config = damaged("bad_config")
    meta = json.loads((bad_config / "config.json").read_text())
    meta["modalities"]["depth"]["widht"] = 3
    (bad_config / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="widht"):
        BindModel.from_pretrained(bad_config)


def test_unknown_command_and_help(tmp_path):
    done = anchorbind("frobnicate", cwd=tmp_path)
    assert done.returncode == 2 and "unknown command" in done.stderr
    done = anchorbind("--help", cwd=tmp_path)
    assert done.returncode == 0 and "--debug" in done.stdout


def test_config_show_prints_a_packaged_config_a_user_can_train_from(tmp_path):
    done = anchorbind("config", "list", cwd=tmp_path)
    assert done.returncode == 0 and {"demo", "base"} <= set(done.stdout.split())
    shown = anchorbind("config", "show", "demo", cwd=tmp_path)
    assert shown.returncode == 0
    from anchorbind.config import load_yaml, resolve_config

    mine = tmp_path / "my.yaml"
    mine.write_text(shown.stdout)
    assert load_yaml(mine) == load_yaml(resolve_config("demo"))
    assert_one_line_error(anchorbind("config", "show", "nope", cwd=tmp_path), 2, "nope")
