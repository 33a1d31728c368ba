"""accelerate as its users expect (issue 17, item 6): precision and gradient accumulation from the
launcher unless the training config sets them, configurable trackers, per-plugin gradient
checkpointing (docs/training.md, "Precision, accumulation, trackers")."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from anchorbind.errors import ConfigError
from anchorbind.registry import get_plugin_class
from anchorbind.train.config import TrainConfig, load_train_config
from anchorbind.train.log import known_trackers
from anchorbind.train.loop import GRAD_ACCUM_ENV, PRECISION_ENV, accelerator_settings, make_accelerator, train
from tests.conftest import REPO, free_port, subprocess_env
from tests.train_utils import tiny_config, write_config

# ---------------------------------------------------------------------- precedence, decided without a launch


def settings_for(environ: dict[str, str], *, cpu: bool = True, **config: Any):
    cfg = TrainConfig()
    cfg.mixed_precision = config.get("mixed_precision")
    cfg.optim.grad_accum_steps = config.get("grad_accum_steps")
    return accelerator_settings(cfg, cpu=cpu, environ=environ)


@pytest.mark.parametrize(("config", "launcher", "cpu", "expected", "source", "warned"), [
    (None, None, True, "no", "auto", False),            # nothing set it: auto, no GPU
    (None, "bf16", True, "bf16", "launcher", False),    # accelerate launch --mixed_precision bf16
    (None, "NO", True, "no", "launcher", False),        # launcher's explicit (or default) no
    ("no", "bf16", True, "no", "config", True),         # the config wins, and says so
    ("bf16", "bf16", True, "bf16", "config", False),    # agreeing: nothing to warn about
    ("auto", "fp16", True, "no", "config", True),       # auto is an explicit choice too
    ("fp16", None, True, "fp16", "config", False),
])
def test_precision_follows_the_launcher_unless_the_config_sets_it(config, launcher, cpu, expected, source, warned):
    environ = {} if launcher is None else {PRECISION_ENV: launcher}
    settings = settings_for(environ, cpu=cpu, mixed_precision=config)
    assert (settings.mixed_precision, settings.mixed_precision_source) == (expected, source)
    assert bool(settings.warnings) == warned
    if warned:
        assert "set mixed_precision: null to follow the launcher" in settings.warnings[0]
        assert repr(launcher.lower()) in settings.warnings[0]


def test_auto_precision_picks_bf16_on_a_capable_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert settings_for({}, cpu=False).mixed_precision == "bf16"
    assert settings_for({PRECISION_ENV: "no"}, cpu=False).mixed_precision == "no"  # the launcher said no


@pytest.mark.parametrize(("config", "launcher", "expected", "source", "warned"), [
    (None, None, 1, "default", False),
    (None, "4", 4, "launcher", False),
    (2, "4", 2, "config", True),
    (4, "4", 4, "config", False),
    (3, None, 3, "config", False),
])
def test_grad_accum_follows_the_launcher_unless_the_config_sets_it(config, launcher, expected, source, warned):
    environ = {} if launcher is None else {GRAD_ACCUM_ENV: launcher}
    settings = settings_for(environ, grad_accum_steps=config)
    assert (settings.grad_accum_steps, settings.grad_accum_steps_source) == (expected, source)
    assert bool(settings.warnings) == warned


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_launcher_accumulation_is_a_config_error(value):
    with pytest.raises(ConfigError, match=f"{GRAD_ACCUM_ENV}='{value}'.*whole number >= 1"):
        settings_for({GRAD_ACCUM_ENV: value})


def test_the_accelerator_gets_the_config_accumulation_over_the_environment(tmp_path, monkeypatch, caplog):
    """accelerate lets ACCELERATE_GRADIENT_ACCUMULATION_STEPS override ``gradient_accumulation_steps=``;
    the Accelerator must sync after exactly the micro-batches the loop runs."""
    from accelerate.utils import InitProcessGroupKwargs

    monkeypatch.setenv(GRAD_ACCUM_ENV, "3")
    cfg = TrainConfig(output_dir=str(tmp_path))
    cfg.optim.grad_accum_steps = 2
    handler = InitProcessGroupKwargs(timeout=timedelta(seconds=123))
    with caplog.at_level(logging.WARNING, logger="anchorbind.train"):
        accelerator = make_accelerator(cfg, kwargs_handlers=[handler])
    assert accelerator.gradient_accumulation_steps == 2
    assert accelerator.init_handler is handler, "kwargs_handlers reach accelerate"
    assert accelerator.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [str(getattr(name, "value", name)) for name in accelerator.log_with] == ["tensorboard"]
    assert "overrides the launcher's 3" in caplog.text

    monkeypatch.delenv(GRAD_ACCUM_ENV)
    cfg.optim.grad_accum_steps = None
    cfg.log.trackers = ["csv"]
    accelerator = make_accelerator(cfg)
    assert accelerator.gradient_accumulation_steps == 1 and not accelerator.log_with


# ---------------------------------------------------------------------- trackers: config errors


def load(tmp_path: Path, world_dir: Path, *overrides: str) -> TrainConfig:
    cfg = tiny_config(tmp_path / "run", world_dir / "train", list(overrides))
    tmp_path.mkdir(parents=True, exist_ok=True)
    return load_train_config(write_config(tmp_path / "cfg.yaml", cfg))


def test_unknown_tracker_is_a_config_error_listing_the_available_ones(tmp_path, world_dir):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, world_dir, "log.trackers=[tensorboard, tensorbord]")
    text = str(err.value)
    assert "log.trackers: unknown tracker 'tensorbord'; available: " in text
    for name in ("csv", "tensorboard", "wandb", "mlflow"):
        assert name in known_trackers() and name in text


def test_a_tracker_whose_package_is_missing_names_the_pip_package(tmp_path, world_dir, monkeypatch):
    from anchorbind.train import log as train_log

    monkeypatch.setattr(train_log, "_tracker_installed", lambda name: name == "tensorboard")
    with pytest.raises(ConfigError, match=r"'comet_ml' needs the 'comet-ml' package, which is not installed "
                                          r"\(pip install comet-ml\)"):
        load(tmp_path, world_dir, "log.trackers=[comet_ml]")
    monkeypatch.undo()
    from accelerate.utils import is_wandb_available

    if not is_wandb_available():  # the real check, where wandb is absent (it is not a dependency)
        with pytest.raises(ConfigError, match=r"'wandb' needs the 'wandb' package.*pip install wandb"):
            load(tmp_path, world_dir, "log.trackers=[wandb]")


@pytest.mark.parametrize(("override", "message"), [
    ("log.trackers=[csv, csv]", "log.trackers names csv more than once"),
    ("log.init_kwargs={mlflow: {run_name: a}}", "log.init_kwargs names 'mlflow', which is not in log.trackers"),
    ("mixed_precision=bf17", "mixed_precision must be one of ('auto', 'no', 'bf16', 'fp16'), or null"),
    ("optim.grad_accum_steps=0", "optim.grad_accum_steps must be >= 1, got 0"),
])
def test_bad_settings_are_config_errors(tmp_path, world_dir, override, message):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, world_dir, override)
    assert message in str(err.value)


def test_a_bare_yaml_no_is_accelerates_no(tmp_path, world_dir):
    assert load(tmp_path, world_dir, "mixed_precision=no").mixed_precision == "no"  # YAML reads `no` as false
    with pytest.raises(ConfigError, match=r"mixed_precision must be one of .* got True"):
        load(tmp_path, world_dir, "mixed_precision=yes")


def test_defaults_follow_the_launcher_and_log_to_tensorboard(tmp_path, world_dir):
    cfg = load(tmp_path, world_dir)
    assert cfg.mixed_precision is None and cfg.optim.grad_accum_steps is None
    assert cfg.log.trackers == ["tensorboard"]
    for name in ("base", "demo"):
        data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        assert data.get("mixed_precision") is None, f"configs/{name}.yaml would override the launcher"
        assert data.get("optim", {}).get("grad_accum_steps") is None


# ---------------------------------------------------------------------- trackers: a real run


def test_trackers_tensorboard_generic_accelerate_tracker_and_csv_only(tmp_path, world_dir, monkeypatch):
    """TensorBoard and a tracker registered with accelerate (the path wandb, mlflow, ... take) get
    every logged step; ``trackers: [csv]`` writes only train_log.csv. The second run checkpoints its
    ViT trunks and trains to the same losses."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

    calls: dict[str, list[Any]] = {"init": [], "config": [], "log": [], "finish": []}

    class ProbeTracker(GeneralTracker):
        name = "probe"
        requires_logging_directory = False
        main_process_only = True

        def __init__(self, run_name: str, **kwargs: Any) -> None:
            super().__init__()
            calls["init"].append((run_name, kwargs))

        @property
        def tracker(self) -> None:
            return None

        def store_init_configuration(self, values: dict[str, Any]) -> None:
            calls["config"].append(values)

        def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
            calls["log"].append((step, dict(values)))

        def finish(self) -> None:
            calls["finish"].append(True)

    monkeypatch.setitem(LOGGER_TYPE_TO_CLASS, "probe", ProbeTracker)  # register_tracker_class, undone after
    cfg = load(tmp_path / "a", world_dir, "steps=2", "log.trackers=[tensorboard, probe]", "log.project=bindrun",
               "log.init_kwargs={probe: {tag: seven}}")
    summary = train(cfg)
    run = Path(cfg.output_dir)
    assert summary["trackers"] == ["tensorboard", "probe"]
    assert list((run / "bindrun").rglob("events.out.tfevents.*")), "TensorBoard events under output_dir/<project>"
    assert calls["init"] == [("bindrun", {"tag": "seven"})]
    assert calls["config"] and calls["config"][0]["optim/lr"] == pytest.approx(2e-3)
    assert [step for step, _ in calls["log"]] == [1, 2] and all("loss" in values for _, values in calls["log"])
    assert calls["finish"] == [True]
    with (run / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["loss"]) for r in rows] == pytest.approx([values["loss"] for _, values in calls["log"]])

    cfg = load(tmp_path / "b", world_dir, "steps=2", "log.trackers=[csv]",
               "model.modalities.audio.gradient_checkpointing=true",
               "model.modalities.depth.gradient_checkpointing=true")
    assert cfg.model.modalities["audio"]["gradient_checkpointing"] is True
    summary = train(cfg)
    run = Path(cfg.output_dir)
    assert summary["trackers"] == [] and (run / "train_log.csv").is_file()
    assert not list(run.rglob("events.out.tfevents.*")), "no TensorBoard without it in log.trackers"
    with (run / "train_log.csv").open() as handle:
        checkpointed = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert checkpointed == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)


# ---------------------------------------------------------------------- gradient checkpointing


def first_attention(plugin: torch.nn.Module) -> torch.nn.Module:
    """The attention of the first trunk block (timm ViT / BERT): it runs inside the checkpointed
    call (transformers checkpoints a layer's ``forward``, so hooks on the layer itself run once)."""
    trunk = plugin.trunk
    return trunk.blocks[0].attn if hasattr(trunk, "blocks") else trunk.encoder.layer[0].attention


def loss_and_grads(name: str, config: dict[str, Any]) -> tuple[float, dict[str, torch.Tensor], int, Any]:
    """One forward/backward of a fresh plugin (seed 0); the forward calls of its first trunk block."""
    cls = get_plugin_class(name)
    torch.manual_seed(0)
    plugin = cls(config, embed_dim=16).train()
    calls = [0]
    first_attention(plugin).register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    batch = plugin.load_batch(cls.example_inputs()[:2])
    torch.manual_seed(1)
    emb = plugin(batch)
    loss = (emb * torch.linspace(-1, 1, emb.shape[-1])).sum() + emb[:, 0].pow(2).sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in plugin.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, calls[0], plugin


@pytest.mark.parametrize(("name", "config"), [
    ("audio", {"width": 32, "depth": 2, "num_heads": 2, "tuning": "full", "drop_path_rate": 0.2}),
    ("depth", {"image_size": 32, "width": 32, "depth": 2, "num_heads": 2, "tuning": "lora"}),
    ("text", {"tuning": "full"}),
    ("text", {"tuning": "lora"}),
])
def test_gradient_checkpointing_same_loss_and_grads_with_recomputed_blocks(name, config):
    loss, grads, forwards, _ = loss_and_grads(name, {**config, "gradient_checkpointing": False})
    loss_ckpt, grads_ckpt, forwards_ckpt, plugin = loss_and_grads(name, {**config, "gradient_checkpointing": True})
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    if config["tuning"] == "lora":
        assert all("lora_" in k or not k.startswith("trunk.") for k in grads)
        assert any("lora_" in k for k in grads), "LoRA adapters get gradients through checkpointed blocks"
    for key in grads:
        torch.testing.assert_close(grads_ckpt[key], grads[key], rtol=1e-5, atol=1e-6, msg=key)
    assert forwards == 1
    assert forwards_ckpt == 2, "a checkpointed block runs again in backward (its activations were not kept)"

    plugin.eval()  # evaluation and export: no checkpointing
    with torch.no_grad():
        calls = [0]
        first_attention(plugin).register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        plugin(plugin.load_batch(type(plugin).example_inputs()[:2]))
    if hasattr(plugin.trunk, "grad_checkpointing"):
        assert plugin.trunk.grad_checkpointing is False
        plugin.train()
        assert plugin.trunk.grad_checkpointing is True


def test_gradient_checkpointing_on_a_frozen_trunk_is_left_off_with_a_note(caplog):
    cls = get_plugin_class("audio")
    with caplog.at_level(logging.INFO, logger="anchorbind.plugin"):
        plugin = cls({"width": 32, "depth": 1, "num_heads": 2, "tuning": "frozen", "gradient_checkpointing": True},
                     embed_dim=16).train()
    assert plugin.trunk.grad_checkpointing is False
    assert "gradient_checkpointing: the trunk is frozen" in caplog.text


def test_gradient_checkpointing_on_a_trunk_without_a_switch_is_a_config_error():
    base = get_plugin_class("audio")

    class PlainTrunk(base):  # type: ignore[misc, valid-type]
        def build_trunk(self) -> tuple[torch.nn.Module, int]:
            return torch.nn.Sequential(torch.nn.Linear(4, 4)), 4

    with pytest.raises(ConfigError, match=r"gradient_checkpointing: .*has no gradient checkpointing switch"):
        PlainTrunk({"gradient_checkpointing": True}, embed_dim=8)
    PlainTrunk({}, embed_dim=8)  # off: fine


# ---------------------------------------------------------------------- real launches


def launch(tmp_path: Path, name: str, config: dict[str, Any], *launch_args: str,
           env: dict[str, str] | None = None) -> tuple[dict[str, Any], str, list[dict[str, str]]]:
    cfg_path = write_config(tmp_path / f"{name}.yaml", config)
    cmd = ["accelerate", "launch", "--num_machines", "1", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *launch_args,
           "-m", "anchorbind.train", "--config", str(cfg_path)]
    result = subprocess.run(cmd, env=subprocess_env(OMP_NUM_THREADS="1", **(env or {})), cwd=REPO, timeout=900,
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    run = Path(config["output_dir"])
    with (run / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return json.loads((run / "train_summary.json").read_text()), output, rows


@pytest.mark.slow
def test_launcher_precision_and_accumulation_reach_the_accelerator(tmp_path, world_dir):
    """``accelerate launch --mixed_precision bf16`` (and the launcher's accumulation) take effect when
    the training config leaves them unset; an explicit config value wins, with one warning."""
    shards = world_dir / "train"
    env = {GRAD_ACCUM_ENV: "2"}
    followed, output, rows = launch(tmp_path, "follow", tiny_config(tmp_path / "follow", shards, ["steps=2"]),
                                    "--num_processes", "1", "--mixed_precision", "bf16", env=env)
    assert output.count("mixed_precision bf16 (from the launcher) | grad_accum_steps 2 (from the launcher)") == 1
    assert (followed["mixed_precision"], followed["mixed_precision_source"]) == ("bf16", "launcher")
    assert (followed["grad_accum_steps"], followed["grad_accum_steps_source"]) == (2, "launcher")
    assert followed["samples"] == 2 * 2 * 8, "two micro-batches of 8 per step"
    assert "global batch: 16" in output

    config = tiny_config(tmp_path / "explicit", shards, ["steps=2", "mixed_precision=no"])
    explicit, output, explicit_rows = launch(tmp_path, "explicit", config,
                                             "--num_processes", "1", "--mixed_precision", "bf16", env=env)
    assert (explicit["mixed_precision"], explicit["mixed_precision_source"]) == ("no", "config")
    assert (explicit["grad_accum_steps"], explicit["grad_accum_steps_source"]) == (2, "launcher")
    assert output.count("overrides the launcher's 'bf16'") == 1
    # same data, same weights: only the precision differs, and it shows in the loss
    first, second = float(rows[0]["loss"]), float(explicit_rows[0]["loss"])
    assert first != second and abs(first - second) < 0.1


@pytest.mark.slow
@pytest.mark.distributed
def test_shipped_multi_gpu_accelerate_config_precision_takes_effect(tmp_path, world_dir):
    """configs/accelerate/multi_gpu.yaml says bf16: under it (2 gloo processes on a CPU-only
    machine) every process trains in bf16 and the run records that the launcher chose it."""
    shipped = yaml.safe_load((REPO / "configs/accelerate/multi_gpu.yaml").read_text())
    assert shipped["mixed_precision"] == "bf16"
    config = tiny_config(tmp_path / "run", world_dir / "train", ["steps=2"])
    summary, output, _ = launch(tmp_path, "cfg", config, "--config_file",
                                str(REPO / "configs/accelerate/multi_gpu.yaml"), "--num_processes", "2")
    assert summary["processes"] == 2
    assert (summary["mixed_precision"], summary["mixed_precision_source"]) == ("bf16", "launcher")
    assert output.count("mixed_precision bf16 (from the launcher)") == 1, "said once, by the main process"
