"""Train modality plugins against the frozen image anchor.

Launch lines::

    # one process (CPU or one GPU)
    anchorbind train --config demo
    # several processes on one machine (GPUs; on a CPU-only machine: two gloo processes)
    accelerate launch --multi_gpu --num_processes 2 -m anchorbind.train --config demo
    # several machines: see configs/accelerate/multi_node.yaml
    accelerate launch --config_file "$(anchorbind config path accelerate/multi_node)" -m anchorbind.train --config base

    # overrides, and exact resume from the newest checkpoint in output_dir
    anchorbind train --config demo --set optim.lr=3e-4 --set steps=500 --resume
    # one run per output_dir: a fresh start over an existing run needs --resume or --overwrite
    anchorbind train --config demo --overwrite

The loop reads top to bottom: set-up (including :mod:`anchorbind.train.data_check`: plugins
whose modality the data lacks, a cache built for another anchor), then one step per iteration
(forward, loss, backward, clip, step), with logging and checkpoints on the side. Everything distributed goes through
accelerate; the contrastive loss (``anchorbind.losses.binding``) gathers embeddings so negatives are global.

Exact resume: one loader serves the whole run (epoch after epoch, :mod:`anchorbind.data.sampler`);
each checkpoint saves every process's loader position (``loader_state.json``), and a resumed run
builds its loader at that position, so it sees the same batches (and the same RNG states,
restored by accelerate) as an uninterrupted run. A process that waits longer than
``data.batch_timeout_s`` for a batch, or ``dist_timeout_s`` in a collective, stops with an error
(:mod:`anchorbind.train.watchdog`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, KwargsHandler, broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm

from anchorbind.config import config_to_dict
from anchorbind.data.loader import UNKNOWN_SIZES, ShardLoader, StreamOptions, build_loader
from anchorbind.data.shardlist import expand_shards, shard_sizes
from anchorbind.errors import AnchorBindError, ConfigError, debug_enabled, exit_code
from anchorbind.losses.binding import BindingLoss
from anchorbind.model import BindModel
from anchorbind.registry import ANCHOR_MODALITY
from anchorbind.train.checkpoint import (
    LOADER_STATE_FILE,
    latest_checkpoint,
    load_checkpoint,
    loader_state_for,
    read_checkpoint_file,
    save_checkpoint,
)
from anchorbind.train.config import TrainConfig, load_train_config
from anchorbind.train.data_check import DataPlan, plan_data, resolve_anchor_source
from anchorbind.train.log import (
    CSV_TRACKER,
    DECODE_ERRORS_FILE,
    DecodeErrorLog,
    TrainLogger,
    accelerate_trackers,
    write_json_atomic,
)
from anchorbind.train.optim import build_optimizer, build_scheduler
from anchorbind.train.rundir import RunDirPlan, RunLock, check_output_dir, check_shared_output_dir, prepare_run_dir
from anchorbind.train.watchdog import BatchWatchdog, process_group_kwargs

__all__ = ["AcceleratorSettings", "NonFiniteLossError", "accelerator_settings", "main", "make_accelerator",
           "resolve_anchor_source", "train"]

log = logging.getLogger("anchorbind.train")
T = TypeVar("T")


class NonFiniteLossError(AnchorBindError, RuntimeError):
    """Raised after ``max_nonfinite_steps`` consecutive steps with a NaN/inf loss (CLI: one line, exit 1)."""


PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
"""Set by ``accelerate launch`` from ``--mixed_precision`` or its config file (``no`` when neither names one)."""
GRAD_ACCUM_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
"""Set by ``accelerate launch --gradient_accumulation_steps`` (a DeepSpeed launch), or by hand."""
SOURCE_WORDS = {"config": "from the training config", "launcher": "from the launcher", "auto": "auto",
                "default": "default"}


@dataclass(frozen=True)
class AcceleratorSettings:
    """The precision and accumulation the Accelerator is built with, and where each came from.

    Sources: ``config`` (the training config set it: it wins), ``launcher`` (``accelerate launch``,
    its config file or the environment: ``ACCELERATE_MIXED_PRECISION``,
    ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``), ``auto`` (precision: nothing set it; bf16 on a
    GPU that supports it, else ``no``), ``default`` (accumulation: nothing set it; 1).
    ``warnings``: a config value that overrides a different launcher value.
    """

    mixed_precision: str
    mixed_precision_source: str
    grad_accum_steps: int
    grad_accum_steps_source: str
    warnings: tuple[str, ...] = ()


def _auto_precision(cpu: bool) -> str:
    return "bf16" if not cpu and torch.cuda.is_bf16_supported() else "no"


def accelerator_settings(cfg: TrainConfig, *, cpu: bool | None = None,
                         environ: Mapping[str, str] | None = None) -> AcceleratorSettings:
    """Decide precision and gradient accumulation: the training config's when set, else the launcher's.

    ``mixed_precision: null`` follows the launcher (``ACCELERATE_MIXED_PRECISION``), and without
    one ``auto``; ``optim.grad_accum_steps: null`` follows ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``,
    and without it 1. An explicit config value wins; a launcher value that differs is named in
    ``warnings``.

    Raises:
        ConfigError: ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` is not a whole number >= 1.
    """
    environ = os.environ if environ is None else environ
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    warnings: list[str] = []
    launched = (environ.get(PRECISION_ENV) or "").strip().lower() or None
    if cfg.mixed_precision is not None:
        precision = _auto_precision(cpu) if cfg.mixed_precision == "auto" else cfg.mixed_precision
        precision_source = "config"
        if launched is not None and launched != precision:
            warnings.append(
                f"mixed_precision {precision} (training config: mixed_precision: {cfg.mixed_precision}) overrides "
                f"the launcher's {launched!r} ({PRECISION_ENV}, from accelerate launch --mixed_precision or its "
                "config file; 'no' when neither names one); set mixed_precision: null to follow the launcher")
    elif launched is not None:
        precision, precision_source = launched, "launcher"
    else:
        precision, precision_source = _auto_precision(cpu), "auto"

    raw = (environ.get(GRAD_ACCUM_ENV) or "").strip()
    launched_steps: int | None = None
    if raw:
        try:
            launched_steps = int(raw)
        except ValueError:
            launched_steps = 0
        if launched_steps < 1:
            raise ConfigError(f"{GRAD_ACCUM_ENV}={raw!r} (from accelerate launch --gradient_accumulation_steps or "
                              "the environment) must be a whole number >= 1")
    if cfg.optim.grad_accum_steps is not None:
        steps, steps_source = cfg.optim.grad_accum_steps, "config"
        if launched_steps is not None and launched_steps != steps:
            warnings.append(
                f"grad_accum_steps {steps} (training config: optim.grad_accum_steps) overrides the launcher's "
                f"{launched_steps} ({GRAD_ACCUM_ENV}); set optim.grad_accum_steps: null to follow the launcher")
    elif launched_steps is not None:
        steps, steps_source = launched_steps, "launcher"
    else:
        steps, steps_source = 1, "default"
    return AcceleratorSettings(precision, precision_source, steps, steps_source, tuple(warnings))


def make_accelerator(cfg: TrainConfig, settings: AcceleratorSettings | None = None, *,
                     kwargs_handlers: Sequence[KwargsHandler] = ()) -> Accelerator:
    """An Accelerator for this machine: gloo on CPU (``cpu=True`` when no GPU is visible), the
    precision and accumulation of :func:`accelerator_settings` (``settings``, computed when not
    given), the trackers of ``log.trackers``; ``kwargs_handlers`` go to accelerate as they are
    (e.g. ``InitProcessGroupKwargs(timeout=...)``). The main process logs ``settings.warnings``."""
    settings = accelerator_settings(cfg) if settings is None else settings
    trackers = accelerate_trackers(cfg.log.trackers)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=settings.mixed_precision,
        # a plugin, not gradient_accumulation_steps=N: accelerate lets ACCELERATE_GRADIENT_ACCUMULATION_STEPS
        # override that argument silently, and the loop must run exactly as many micro-batches as it syncs after
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=settings.grad_accum_steps),
        step_scheduler_with_optimizer=False,
        # no find_unused_parameters: a plugin whose modality a batch lacks still gets (zero)
        # gradients through _idle_term, so DDP needs no extra graph traversal (nor warns about it)
        kwargs_handlers=list(kwargs_handlers),
        log_with=trackers or None,
        project_dir=cfg.output_dir,
    )
    if accelerator.is_main_process:
        for warning in settings.warnings:
            log.warning("%s", warning)
    return accelerator


def count_parameters(model: torch.nn.Module, untrained: Sequence[torch.nn.Module] = ()) -> dict[str, int]:
    """Trainable and frozen parameter counts; the parameters of ``untrained`` modules count as frozen."""
    left_out = {id(p) for module in untrained for p in module.parameters()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in left_out)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable}


def stream_options(cfg: TrainConfig) -> StreamOptions:
    """The streaming timeouts, retries and failed-shard limit of ``cfg.data``."""
    data = cfg.data
    return StreamOptions(read_timeout_s=data.read_timeout_s, retries=data.retries,
                         retry_backoff_s=data.retry_backoff_s, max_failed_shards=data.max_failed_shards)


def make_train_loader(cfg: TrainConfig, accelerator: Accelerator, model: BindModel, use_cache: bool,
                      plugins: Sequence[str] | None = None, saved: Any = None, *, resumed: bool = False,
                      sidecars: Sequence[str | None] | None = None) -> ShardLoader:
    """The run's one training loader, endless, at the position in ``saved`` (a checkpoint's
    ``loader_state.json``) when ``resumed``.

    ``sidecars``: the anchor cache's sidecar beside each shard, when ``use_cache`` (the data plan's).
    ``plugins``: the modalities decoded (default: every plugin's); a plugin left out of training
    (``data.missing_modalities``) is never decoded, so it never enters a batch. The shards'
    sample counts, which set the split, are found by the main process and given to every
    process. A position that cannot be carried over (another process count, other loader
    settings, a checkpoint without one) restarts the data order at the beginning of the epoch the
    checkpoint was in, with a warning.
    """
    # processors only (no model): they are what each loader worker gets a copy of
    processors = {name: model.processor(name) for name in (model.plugins if plugins is None else plugins)}
    if not use_cache:
        processors[ANCHOR_MODALITY] = model.processor(ANCHOR_MODALITY)
    options = stream_options(cfg)
    # a manifest.json on a server is waited for at most read_timeout_s (else batch_timeout_s, else 60 s)
    lookup = dataclasses.replace(options, read_timeout_s=cfg.data.read_timeout_s or cfg.data.batch_timeout_s or 60)
    (sizes,) = _main_process_decides(accelerator,
                                     lambda: (shard_sizes(expand_shards(cfg.data.train_shards), lookup),))
    num_workers = _workers_that_fit(cfg, sizes, accelerator)

    def build(epoch: int, state: dict[str, Any] | None = None) -> ShardLoader:
        return build_loader(
            cfg.data.train_shards,
            processors,
            train=True,
            batch_size=cfg.data.batch_size,
            num_workers=num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            seed=cfg.seed,
            epoch=epoch,
            sampling=cfg.data.sampling,
            state=state,
            shard_sizes=UNKNOWN_SIZES if sizes is None else sizes,
            stream=options,
            use_anchor_cache=use_cache,
            anchor_identity=model.anchor.identity,
            anchor_sidecars=sidecars or None,
        )

    if not resumed:
        return build(0)
    state, epoch, note = loader_state_for(saved, accelerator.process_index, accelerator.num_processes)
    if state is not None:
        try:
            return build(int(state["signature"]["first_epoch"]), state)
        except (ValueError, KeyError, TypeError) as err:
            note = f"the checkpoint's loader position does not fit this run ({err})"
    if accelerator.is_main_process:
        log.warning("%s: the data order restarts at the beginning of epoch %d", note, epoch or 0)
    return build(epoch or 0)


def _workers_that_fit(cfg: TrainConfig, sizes: Sequence[int] | None, accelerator: Accelerator) -> int:
    """``data.num_workers``, lowered when an epoch is too small to give every reader (processes x
    workers) a batch (a small dataset, e.g. the tiny demo), with a warning.

    Raises:
        ConfigError: an epoch holds less than one batch per process (or, counts unknown, fewer
            shards than processes): no setting of the workers fits.
    """
    processes, wanted = accelerator.num_processes, max(cfg.data.num_workers, 1)
    if sizes is None:
        units, what = len(expand_shards(cfg.data.train_shards)), "shard(s), whose sample counts are unknown"
    else:
        units, what = sum(sizes) // cfg.data.batch_size, f"batch(es) of {cfg.data.batch_size} in an epoch"
    fit = units // processes
    if fit == 0:
        raise ConfigError(f"data.train_shards holds {units} {what}, fewer than one for each of the {processes} "
                          "process(es); lower data.batch_size or add data")
    if fit >= wanted:
        return cfg.data.num_workers
    if accelerator.is_main_process:
        log.warning("data.num_workers lowered from %d to %d: the data holds %d %s, one per reader "
                    "(processes x workers) at most", cfg.data.num_workers, fit, units, what)
    return fit


def _loader_states(accelerator: Accelerator, loader: ShardLoader) -> dict[str, Any]:
    """Every process's loader position, for the checkpoint's ``loader_state.json``."""
    mine = loader.state_dict()
    ranks = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    return {"world_size": accelerator.num_processes, "ranks": ranks}


def _main_process_decides(accelerator: Accelerator, decide: Callable[[], T]) -> T:
    """Run ``decide`` on the main process only and hand its result (or its error) to every process.

    The other processes wait in the broadcast (a barrier); when the main process refuses, they
    raise the same error instead of hanging or failing on their own.
    """
    plan: T | None = None
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            plan = decide()
        except Exception as err:  # sent to the other processes, then raised here
            error = err
    remote: tuple[bool, str] | None = None
    if accelerator.num_processes > 1:
        reason = None if error is None else (isinstance(error, ConfigError), " ".join(str(error).split()))
        message: list[Any] = [plan, reason]
        broadcast_object_list(message, from_process=0)
        plan, remote = message
    if error is not None:
        raise error
    if remote is not None:
        is_config, text = remote
        raise (ConfigError if is_config else AnchorBindError)(text)
    assert plan is not None
    return plan


def _idle_term(params: list[torch.Tensor]) -> torch.Tensor:
    """``0 * sum(params)``: gives every parameter of a plugin absent from this batch a (zero) gradient.

    DDP (without ``find_unused_parameters``) needs a gradient for every trainable parameter in every
    backward; a plugin whose modality is missing from a process's batch would otherwise have none.
    """
    return sum(p.sum() for p in params) * 0.0


def _gather_decode_errors(accelerator: Accelerator, total: DecodeErrorLog, pending: DecodeErrorLog) -> None:
    """Merge every process's ``pending`` errors into ``total`` (identical on every process)."""
    parts = gather_object([pending.to_dict()]) if accelerator.num_processes > 1 else [pending.to_dict()]
    for part in parts:
        total.merge(part)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run training; returns the summary also written to ``output_dir/train_summary.json``.

    One run per ``output_dir`` (:mod:`anchorbind.train.rundir`): the main process locks it for the
    run, a fresh start over an existing run is refused unless ``resume`` (continue it; the config may
    differ only in ``steps`` and cosmetic keys) or ``overwrite`` (delete it first). ``resume`` on a
    finished run does nothing and returns its summary.

    Raises:
        ConfigError: ``output_dir`` is a file, is in use by another run, holds another run, or the
            resumed run's saved config differs (all before any model is built).
        NonFiniteLossError: ``max_nonfinite_steps`` non-finite losses in a row.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run in output_dir, or replace it")
    output_dir = check_output_dir(cfg.output_dir)
    accelerator = make_accelerator(cfg, kwargs_handlers=process_group_kwargs(cfg.dist_timeout_s))
    lock: RunLock | None = None

    def decide() -> RunDirPlan:
        nonlocal lock
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"output_dir {output_dir} cannot be created ({err.strerror or err})") from err
        lock = RunLock.acquire(output_dir)
        return prepare_run_dir(output_dir, config_to_dict(cfg), steps=cfg.steps, resume=resume, overwrite=overwrite)

    try:
        plan = _main_process_decides(accelerator, decide)
        check_shared_output_dir(accelerator, output_dir)  # every process sees rank 0's output_dir, or all stop
        if plan.finished:
            if accelerator.is_main_process:
                log.info("%s: the run already finished at step %d (model in %s); nothing to do",
                         output_dir, cfg.steps, output_dir / "model")
            return plan.summary
        if overwrite and plan.found and accelerator.is_main_process:
            log.info("--overwrite: removed the previous run in %s (%s)", output_dir, ", ".join(plan.found))
        return _run(cfg, accelerator, output_dir, resume=resume)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: TrainConfig, accelerator: Accelerator, output_dir: Path, *, resume: bool) -> dict[str, Any]:
    set_seed(cfg.seed)
    model = BindModel.from_config(cfg.model)
    # which anchor source, which plugins the data can train: decided once, by the main process
    data_plan: DataPlan = _main_process_decides(accelerator, lambda: plan_data(cfg, model))
    if accelerator.is_main_process:
        for note in data_plan.notes:
            log.warning("%s", note)
    use_cache, untrained = data_plan.use_cache, list(data_plan.untrained)
    trained_names = [name for name in model.plugins if name not in untrained]
    if cfg.compile:
        for name in trained_names:
            model.plugins[name].trunk.compile()
    counts = count_parameters(model, [model.plugins[name] for name in untrained])
    loss_fn = BindingLoss(
        weights={m: cfg.loss.weights.get(m, 1.0) for m in trained_names},
        direct_pairs=[tuple(p) for p in cfg.loss.direct_pairs],
        local_loss=cfg.loss.local_loss,
        gap=cfg.loss.gap,
    )
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    bind_model: BindModel = accelerator.unwrap_model(model)
    plugin_names = list(bind_model.plugins)
    trainable = {name: [p for p in bind_model.plugins[name].parameters() if p.requires_grad] for name in plugin_names}

    state: dict[str, Any] = {"step": 0, "samples": 0, "skipped_steps": 0, "decode_errors": 0}
    decode_errors, pending_errors = DecodeErrorLog(), DecodeErrorLog()
    checkpoints = output_dir / "checkpoints"
    saved_loader: Any = None  # the loader position of the checkpoint resumed from
    if resume:
        found = latest_checkpoint(checkpoints)
        if found is None:
            accelerator.print(f"--resume: no checkpoint in {checkpoints}; starting from step 0")
        else:
            state.update(load_checkpoint(accelerator, found, model=bind_model))
            decode_errors = DecodeErrorLog.from_dict(read_checkpoint_file(found, DECODE_ERRORS_FILE))
            saved_loader = read_checkpoint_file(found, LOADER_STATE_FILE)
            accelerator.print(f"resumed from {found} at step {state['step']}")

    logger = TrainLogger(accelerator, output_dir, config=config_to_dict(cfg), resume_step=state["step"],
                         project=cfg.log.project, init_kwargs=cfg.log.init_kwargs)
    settings = accelerator_settings(cfg)  # where precision and accumulation came from (the values: the accelerator's)
    accum = accelerator.gradient_accumulation_steps
    accelerator.print(f"mixed_precision {accelerator.mixed_precision} ({SOURCE_WORDS[settings.mixed_precision_source]})"
                      f" | grad_accum_steps {accum} ({SOURCE_WORDS[settings.grad_accum_steps_source]})"
                      f" | trackers: {', '.join([*accelerate_trackers(cfg.log.trackers), CSV_TRACKER])}")
    if accelerator.is_main_process:
        tmp = output_dir / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        os.replace(tmp, output_dir / "config.yaml")
    accelerator.print(
        f"parameters: {counts['trainable']:,} trainable, {counts['frozen']:,} frozen | "
        f"processes: {accelerator.num_processes} | anchor: {'cache' if use_cache else 'live'} | "
        f"global batch: {cfg.data.batch_size * accelerator.num_processes * accum}"
        + (f" | not trained: {', '.join(untrained)}" if untrained else "")
    )

    consecutive_nonfinite = 0
    progress = tqdm(
        total=cfg.steps, initial=state["step"], disable=not accelerator.is_main_process, desc="train",
        dynamic_ncols=True,
    )
    loader: ShardLoader | None = None
    batches: Iterator[Any] | None = None
    watchdog = BatchWatchdog(cfg.data.batch_timeout_s, describe=lambda: (
        f"rank {accelerator.process_index}: {loader.describe() if loader is not None else 'no loader yet'}"))
    window_start, window_samples = time.perf_counter(), 0
    native_names = [name for name in trained_names if bind_model.plugins[name].config.native_loss_weight > 0]
    model.train()
    while state["step"] < cfg.steps:
        if batches is None:
            loader = make_train_loader(cfg, accelerator, bind_model, use_cache, trained_names, saved_loader,
                                       resumed=state["step"] > 0, sidecars=data_plan.sidecars)
            batches = iter(loader)
        step_finite, step_samples = True, 0
        seen = [0.0] * len(plugin_names)  # processes x micro-batches that had each plugin's modality
        last_seen = seen  # processes whose last micro-batch had it: the logged terms are that batch's
        for micro in range(accum):
            with watchdog.waiting(f"micro-batch {micro + 1} of step {state['step'] + 1}"):
                batch = next(batches)
            pending_errors.add(batch.get("errors", ()), step=state["step"] + 1)
            step_samples += len(batch["__key__"]) * accelerator.num_processes
            with accelerator.accumulate(model):
                out = model(batch)
                terms = loss_fn(out["embeddings"], out["logit_scales"], out["masks"])
                for name, value in out["native"].items():
                    terms[f"native/{name}"] = value
                    terms["loss"] = terms["loss"] + value
                for name in native_names:  # every process logs the same terms, in the same order (the
                    terms.setdefault(f"native/{name}", terms["loss"].new_zeros(()))  # reduce below would hang)
                present = [name in out["embeddings"] for name in plugin_names]
                # one all-reduce: is the loss finite everywhere, and where was each modality present?
                # Every process must take the same branch, or the collectives below would hang.
                flags = torch.cat([torch.isfinite(terms["loss"].detach()).float().reshape(1),
                                   torch.tensor(present, dtype=torch.float32, device=terms["loss"].device)])
                flags = accelerator.reduce(flags, reduction="sum").tolist()
                step_finite &= flags[0] == accelerator.num_processes
                seen = [s + f for s, f in zip(seen, flags[1:], strict=True)]
                last_seen = flags[1:]
                if not step_finite:
                    optimizer.zero_grad(set_to_none=True)
                    continue
                loss = terms["loss"]
                idle = [p for name, here in zip(plugin_names, present, strict=True) if not here
                        for p in trainable[name]]
                if idle:
                    loss = loss + _idle_term(idle)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # a plugin no process saw in this step is left alone (no weight decay, no momentum),
                    # as a single process would leave it: its zero gradients from _idle_term are dropped
                    for name, count in zip(plugin_names, seen, strict=True):
                        if count == 0:
                            for param in trainable[name]:
                                param.grad = None
                    if cfg.optim.grad_clip_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state["step"] += 1
        state["samples"] += step_samples
        window_samples += step_samples
        progress.update(1)
        if state["step"] == cfg.steps:
            state["final_loss"] = float(terms["loss"].detach())
        if step_finite:
            consecutive_nonfinite = 0
        else:
            state["skipped_steps"] += 1
            consecutive_nonfinite += 1
            logger.event(state["step"], "nonfinite_loss", skipped_total=state["skipped_steps"])
            if consecutive_nonfinite >= cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{consecutive_nonfinite} consecutive steps had a non-finite loss (last at step "
                    f"{state['step']}); lower optim.lr, enable gradient clipping, or check the data"
                )
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            elapsed = time.perf_counter() - window_start
            # mean over processes: with local_loss each process holds only its share of the loss
            scalars: dict[str, float | None] = {
                k: accelerator.reduce(v.detach().float(), reduction="mean").item() for k, v in terms.items()}
            # a term whose modality no row of the logged batch had is no measurement: an empty cell
            # (sparse data; a plugin without data has no term at all)
            absent = {name for name, n in zip(plugin_names, last_seen, strict=True) if n == 0}
            for name in absent & set(trained_names):
                scalars[f"contrastive/{name}"] = None
                if name in native_names:
                    scalars[f"native/{name}"] = None
            for a, b in loss_fn.direct_pairs:
                if a in absent or b in absent:
                    scalars[f"direct/{a}-{b}"] = None
            scalars.update({f"logit_scale/{m}": float(s.detach()) for m, s in out["logit_scales"].items()
                            if m in trained_names})
            scalars["lr"] = scheduler.get_last_lr()[0]
            scalars["samples_per_s"] = window_samples / max(elapsed, 1e-9)
            scalars["skipped_steps"] = state["skipped_steps"]
            not_yet_merged = torch.tensor(float(pending_errors.count), device=terms["loss"].device)
            scalars["decode_errors"] = decode_errors.count + int(accelerator.reduce(not_yet_merged, "sum").item())
            logger.log(state["step"], scalars)
            progress.set_postfix(loss=f"{scalars['loss']:.4f}", sps=f"{scalars['samples_per_s']:.1f}")
            window_start, window_samples = time.perf_counter(), 0
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps:
            _gather_decode_errors(accelerator, decode_errors, pending_errors)
            pending_errors = DecodeErrorLog()
            state["decode_errors"] = decode_errors.count
            save_checkpoint(accelerator, checkpoints, state, model=bind_model, keep=cfg.keep_checkpoints,
                            files={DECODE_ERRORS_FILE: decode_errors.to_dict(),
                                   LOADER_STATE_FILE: _loader_states(accelerator, loader)})
            if accelerator.is_main_process:
                write_json_atomic(output_dir / DECODE_ERRORS_FILE, decode_errors.to_dict())
    progress.close()
    watchdog.close()

    # the last step is always checkpointed, so every decode error is merged by now
    summary = {
        **state,
        "decode_errors": decode_errors.count,
        "parameters": counts,
        "processes": accelerator.num_processes,
        "anchor_source": "cache" if use_cache else "live",
        "final_loss": state.get("final_loss", math.nan),
        "untrained_modalities": untrained,
        "mixed_precision": accelerator.mixed_precision,
        "mixed_precision_source": settings.mixed_precision_source,
        "grad_accum_steps": accum,
        "grad_accum_steps_source": settings.grad_accum_steps_source,
        "trackers": accelerate_trackers(cfg.log.trackers),
    }
    if accelerator.is_main_process:
        # a kill between the final checkpoint and here leaves a run that --resume finishes
        bind_model.save_pretrained(output_dir / "model", training_config=config_to_dict(cfg))  # the card shows it
        write_json_atomic(output_dir / DECODE_ERRORS_FILE, decode_errors.to_dict())
        write_json_atomic(output_dir / "train_summary.json", summary)
        log.info("finished at step %d: model in %s; %d decode error(s)%s", state["step"], output_dir / "model",
                 decode_errors.count, f" (see {output_dir / DECODE_ERRORS_FILE})" if decode_errors.count else "")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchorbind train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="a YAML training config, or a packaged one by name (`anchorbind config list`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    parser.add_argument("--output-dir", help="shortcut for --set output_dir=DIR")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the run in output_dir from its newest checkpoint (a finished run: nothing "
                            "to do); the config may differ only in steps, log_every, keep_checkpoints, "
                            "data.eval_shards")
    group.add_argument("--overwrite", action="store_true",
                       help="delete the run already in output_dir (checkpoints, model, logs) and start again")
    return parser


def _quiet_secondary_process() -> None:
    """Processes other than the main one print warnings and errors only (no info lines, no bars)."""
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers fork after tokenizing
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    # under accelerate/torchrun every process runs this; only the main one (RANK 0) talks
    main_process = int(os.environ.get("RANK", "0") or 0) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its "saving state" lines at each checkpoint
    if not main_process:
        _quiet_secondary_process()
    try:
        cfg = load_train_config(args.config, overrides)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    except AnchorBindError as err:
        if not main_process and not debug_enabled():
            return exit_code(err)  # the main process reports it, once
        raise
    return 0


if __name__ == "__main__":
    from anchorbind.errors import run_command

    sys.exit(run_command("anchorbind train", main))
