"""The training run's configuration: dataclasses built from YAML, unknown keys refused.

A YAML file mirrors :class:`TrainConfig` section by section (see ``configs/demo.yaml``);
``--set optim.lr=3e-4`` style overrides are applied before validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchorbind.config import apply_overrides, from_dict, load_yaml
from anchorbind.errors import ConfigError
from anchorbind.losses.gap_regularizers import GapRegularizerConfig
from anchorbind.model import ModelConfig

__all__ = ["DataConfig", "LogConfig", "LossConfig", "OptimConfig", "TrainConfig", "load_train_config"]

ANCHOR_SOURCES = ("auto", "cache", "live")
MISSING_MODALITY_POLICIES = ("error", "ignore")
PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass
class DataConfig:
    """Where samples come from and how they are batched.

    Attributes:
        train_shards: shard list for training: brace notation, a directory of ``.tar`` files, or
            any URL webdataset reads (``pipe:``, http, object storage).
        eval_shards: optional shards evaluated by ``anchorbind eval`` after training.
        batch_size: samples per process per micro-step (the global batch is this x processes).
        num_workers: loader worker processes per training process.
        shuffle_buffer: sample shuffle buffer size.
        anchor: ``cache`` reads stored anchor embeddings (``anchorbind cache``), ``live`` runs the
            frozen anchor on decoded images, ``auto`` uses the cache when the shards carry this
            anchor's (and says so when they carry another anchor's).
        anchor_cache: where the anchor cache's sidecars are (``anchorbind.data.anchor_store``):
            a folder, an ``http(s)`` URL, or a template with ``{name}``
            (``pipe:aws s3 cp s3://bucket/cache/{name} -``); null: ``anchor-cache`` beside the
            shards (a local folder or the same server).
        missing_modalities: what to do with plugins whose modality no training sample carries:
            ``error`` (stop, naming them), ``ignore`` (train the others; those plugins stay as
            built, with no loss term), or a list of the plugins that may be missing (ignored when
            they are; any other missing plugin is an error).
        modality_lookahead: without a ``manifest.json`` listing the training shards (URLs,
            hand-made shards), at most this many samples are read to find which modalities the
            data holds (``anchorbind.data.inventory``).
        sampling: ``epoch`` (every sample once per epoch, a new shard order each epoch, split
            by process and worker without overlap) or ``resampled`` (each epoch's shards drawn
            with replacement); ``anchorbind.data.sampler``. Training stops at ``steps`` either way.
        read_timeout_s: a shard read (``http(s)``, ``pipe:``, object stores) that gets no byte
            for this long fails and is retried; null waits forever (``anchorbind.data.streaming``).
        retries: attempts after a failed shard read (without progress) before the shard is
            skipped and counted.
        retry_backoff_s: the first delay before a retry; it doubles at each further retry (at
            most 60 s).
        max_failed_shards: shards each training process may skip (after their retries) before
            training stops with an error naming them.
        batch_timeout_s: a training process that waits longer than this for one batch stops with
            an error (``anchorbind.train.watchdog``); null never.
    """

    train_shards: str = ""
    eval_shards: str | None = None
    batch_size: int = 64
    num_workers: int = 2
    shuffle_buffer: int = 1000
    anchor: str = "auto"
    anchor_cache: str | None = None
    missing_modalities: str | list[str] = "error"
    modality_lookahead: int = 1000
    sampling: str = "epoch"
    read_timeout_s: float | None = 60.0
    retries: int = 5
    retry_backoff_s: float = 1.0
    max_failed_shards: int = 10
    batch_timeout_s: float | None = 600.0


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule (weight decay skips norms, biases and logit scales).

    ``grad_accum_steps``: micro-batches per optimizer step. ``None`` (the default): the
    launcher's (``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``, e.g. from ``accelerate launch
    --use_deepspeed --gradient_accumulation_steps N``), else 1. A number here wins over the
    launcher, with a warning when they differ (``anchorbind.train.loop.accelerator_settings``).
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    grad_accum_steps: int | None = None
    grad_clip_norm: float | None = 1.0


@dataclass
class LossConfig:
    """The binding objective.

    Attributes:
        weights: per-modality weight of its InfoNCE term against the anchor (default 1).
        direct_pairs: plugin-plugin pairs contrasted directly, e.g. ``[[text, audio]]``. Empty for
            anchor-only binding; used to train the *direct* baseline that emergent retrieval is
            compared against.
        local_loss: compute logits for local rows only against gathered columns (memory linear in
            the global batch), as open_clip's ``local_loss``.
        gap: modality-gap regularisers and their weights.
    """

    weights: dict[str, float] = field(default_factory=dict)
    direct_pairs: list[list[str]] = field(default_factory=list)
    local_loss: bool = False
    gap: GapRegularizerConfig = field(default_factory=GapRegularizerConfig)


@dataclass
class LogConfig:
    """Where the training scalars go (:class:`anchorbind.train.log.TrainLogger`).

    ``output_dir/train_log.csv`` is always written (the evaluation report plots it); ``csv`` in
    ``trackers`` names it, so ``trackers: []`` or ``[csv]`` logs to the CSV only.

    Attributes:
        trackers: accelerate trackers (``accelerate.tracking``) by name: ``tensorboard`` (the
            default; events under ``output_dir/<project>``), ``wandb``, ``mlflow``, ``comet_ml``,
            ``aim``, ``clearml``, ``dvclive``, ``swanlab``, ``trackio``, or a tracker registered
            with ``accelerate.tracking.register_tracker_class``. An unknown name, or a tracker
            whose package is not installed, is a config error.
        project: the project name the trackers get (TensorBoard's folder in ``output_dir``,
            the wandb / mlflow project or experiment).
        init_kwargs: per-tracker keyword arguments for its run, e.g.
            ``{wandb: {entity: my-team, name: run-1}}`` (accelerate's ``init_trackers``).
    """

    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: str = "anchorbind"
    init_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """A whole training run.

    Attributes:
        steps: optimizer steps (each consumes ``grad_accum_steps`` micro-batches per process).
        checkpoint_every: save a resumable checkpoint every this many steps (and at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        mixed_precision: ``None`` (the default): the launcher's (``accelerate launch
            --mixed_precision``, its config file, ``ACCELERATE_MIXED_PRECISION``), else ``auto``.
            ``auto``: bf16 on a GPU that supports it, else full precision (``no``). ``no``,
            ``bf16``, ``fp16``: that, whatever the launcher says (a launcher that says otherwise
            is warned about). The run records which won (``train_summary.json``). A bare YAML
            ``no`` (read as false) means ``no``.
        log: trackers (:class:`LogConfig`).
        compile: ``torch.compile`` the plugin trunks.
        max_nonfinite_steps: stop with an error after this many consecutive non-finite losses.
        dist_timeout_s: torch.distributed's timeout for collectives (accelerate's
            ``InitProcessGroupKwargs``): a process waiting this long for another stops with an error.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    output_dir: str = "runs/anchorbind"
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    mixed_precision: str | bool | None = None
    compile: bool = False
    max_nonfinite_steps: int = 5
    dist_timeout_s: float = 1800.0
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads accelerate's `no` as false
            self.mixed_precision = "no"

    def _check_plugins(self) -> None:
        """Unknown modalities and bad plugin config keys fail here, before any model is built."""
        from anchorbind.registry import get_plugin_class

        for name, plugin_cfg in self.model.modalities.items():
            cls = get_plugin_class(name)
            from_dict(cls.Config, plugin_cfg or {}, where=f"model.modalities.{name}")

    def validate(self) -> TrainConfig:
        """Check values that types alone do not constrain; returns ``self``."""
        problems = []
        if not self.data.train_shards:
            problems.append("data.train_shards is required")
        if self.data.anchor not in ANCHOR_SOURCES:
            problems.append(f"data.anchor must be one of {ANCHOR_SOURCES}, got {self.data.anchor!r}")
        missing = self.data.missing_modalities
        if isinstance(missing, str) and missing not in MISSING_MODALITY_POLICIES:
            problems.append(f"data.missing_modalities must be one of {MISSING_MODALITY_POLICIES} or a list of "
                            f"plugins, got {missing!r}")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            problems.append(f"mixed_precision must be one of {PRECISIONS}, or null for the launcher's, "
                            f"got {self.mixed_precision!r}")
        if not self.model.modalities:
            problems.append("model.modalities names no plugin to train")
        self._check_plugins()
        for key, value in {
            "steps": self.steps, "data.batch_size": self.data.batch_size, "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
            "optim.grad_accum_steps": 1 if self.optim.grad_accum_steps is None else self.optim.grad_accum_steps,
            "max_nonfinite_steps": self.max_nonfinite_steps,
            "data.modality_lookahead": self.data.modality_lookahead,
        }.items():
            if value < 1:
                problems.append(f"{key} must be >= 1, got {value}")
        problems += self._value_problems()
        problems += self._stream_problems()
        problems += self._log_problems()
        known = set(self.model.modalities)
        for name in self.loss.weights:
            if name not in known:
                problems.append(f"loss.weights names {name!r}, which is not in model.modalities {sorted(known)}")
        for pair in self.loss.direct_pairs:
            if len(pair) != 2 or not set(pair) <= known or pair[0] == pair[1]:
                problems.append(f"loss.direct_pairs entry {pair} must be two different modalities of {sorted(known)}")
        problems += self._output_dir_problems()
        if not problems:  # the filesystem is read only for an otherwise valid config
            problems += self._shard_problems()
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))
        return self

    def _value_problems(self) -> list[str]:
        """Numbers whose type is right but whose value no run can use: key, allowed values, value given."""
        optim, data = self.optim, self.data
        problems = []
        for key, value in {"optim.lr": optim.lr, "optim.eps": optim.eps}.items():
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{key} must be a number > 0, got {value}")
        if not (math.isfinite(optim.weight_decay) and optim.weight_decay >= 0):
            problems.append(f"optim.weight_decay must be a number >= 0, got {optim.weight_decay}")
        if not all(0 <= beta < 1 for beta in optim.betas):
            problems.append(f"optim.betas must be two numbers in [0, 1), got {list(optim.betas)}")
        if optim.grad_clip_norm is not None and not (optim.grad_clip_norm > 0 and math.isfinite(optim.grad_clip_norm)):
            problems.append(f"optim.grad_clip_norm must be a number > 0, or null for no clipping, got "
                            f"{optim.grad_clip_norm}")
        for key, value in {"optim.warmup_steps": optim.warmup_steps, "data.num_workers": data.num_workers,
                           "data.shuffle_buffer": data.shuffle_buffer}.items():
            if value < 0:
                problems.append(f"{key} must be an integer >= 0, got {value}")
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed must be an integer in [0, 2**32), got {self.seed}")
        for name, weight in self.loss.weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                problems.append(f"loss.weights.{name} must be a number >= 0, got {weight}")
        return problems

    def _log_problems(self) -> list[str]:
        """Unknown trackers, trackers whose package is missing, ``init_kwargs`` for no tracker."""
        from anchorbind.train.log import tracker_problems

        problems = tracker_problems(self.log.trackers)
        if not self.log.project.strip():
            problems.append("log.project must not be empty")
        for name in self.log.init_kwargs:
            if name not in self.log.trackers:
                problems.append(f"log.init_kwargs names {name!r}, which is not in log.trackers {self.log.trackers}")
        return problems

    def _stream_problems(self) -> list[str]:
        """``data.sampling`` and the streaming timeouts, retries and limits."""
        from anchorbind.data.sampler import SAMPLINGS

        data, problems = self.data, []
        if data.sampling not in SAMPLINGS:
            problems.append(f"data.sampling must be one of {SAMPLINGS}, got {data.sampling!r}")
        for key, value in {"data.read_timeout_s": data.read_timeout_s, "data.batch_timeout_s": data.batch_timeout_s,
                           "dist_timeout_s": self.dist_timeout_s}.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                none = "" if key == "dist_timeout_s" else ", or null for none"
                problems.append(f"{key} must be a number of seconds > 0{none}, got {value}")
        if not (math.isfinite(data.retry_backoff_s) and data.retry_backoff_s >= 0):
            problems.append(f"data.retry_backoff_s must be a number >= 0, got {data.retry_backoff_s}")
        for key, value in {"data.retries": data.retries, "data.max_failed_shards": data.max_failed_shards}.items():
            if value < 0:
                problems.append(f"{key} must be an integer >= 0, got {value}")
        return problems

    def _output_dir_problems(self) -> list[str]:
        """``output_dir`` (or a folder above it) is an existing file: nothing could be written there."""
        if not self.output_dir:
            return ["output_dir must name a directory, got ''"]
        path = Path(self.output_dir)
        for folder in (path, *path.parents):
            if folder.exists():
                if not folder.is_dir():
                    what = "is" if folder == path else f"is under {str(folder)!r}, which is"
                    return [f"output_dir {self.output_dir!r} {what} a file, not a directory; "
                            "give a new or existing directory"]
                break
        return []

    def _shard_problems(self) -> list[str]:
        """Local shard specs that name no file, and a batch larger than the training shards hold.

        URLs (``pipe:``, ``http://``, ``s3://``, ...) cannot be checked without streaming them and are
        left to the loader. The sample count comes from the split's ``manifest.json`` or the tar
        headers (:func:`~anchorbind.data.shardlist.count_samples`), reading no more than a batch.
        """
        from anchorbind.data.shardlist import count_samples, expand_shards, is_url

        problems = []
        allowed = "a .tar file, a directory of .tar files, a glob, brace notation or a URL"
        for key, spec in (("data.train_shards", self.data.train_shards), ("data.eval_shards", self.data.eval_shards)):
            if not spec:
                continue
            try:
                urls = expand_shards(spec)
            except (FileNotFoundError, ValueError) as err:
                problems.append(f"{key} {spec!r}: {err} (expected {allowed})")
                continue
            local = [url for url in urls if not is_url(url)]
            missing = [url for url in local if not Path(url).is_file()]
            empty = [url for url in local if url not in missing and Path(url).stat().st_size == 0]
            if missing:
                where = "" if Path(missing[0]).is_absolute() else f" (relative to {Path.cwd()})"
                what = ("no such file or directory" if len(urls) == 1
                        else f"{len(missing)} of {len(urls)} shards not found, first: {missing[0]}")
                problems.append(f"{key} {spec!r}: {what}{where} (expected {allowed})")
            if empty:
                problems.append(f"{key} {spec!r}: {len(empty)} shard(s) are empty files, first: {empty[0]}")
            if key == "data.train_shards" and not missing and not empty:
                found = count_samples(urls, at_least=self.data.batch_size)
                if found is not None and found < self.data.batch_size:
                    problems.append(f"data.batch_size must be <= the {found} samples in data.train_shards {spec!r} "
                                    f"(a training batch holds distinct samples), got {self.data.batch_size}")
        return problems


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config, apply ``key=value`` overrides, validate it."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(TrainConfig, data, where=str(path or "config")).validate()
