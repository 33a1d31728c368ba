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

The loop reads top to bottom: set-up, then one step per iteration (forward, loss, backward,
clip, step), with logging and checkpoints on the side. Everything distributed goes through
accelerate; the contrastive loss (``anchorbind.losses.binding``) gathers embeddings so negatives are global.

Exact resume: data for steps ``[c, c + checkpoint_every)`` comes from a loader seeded by ``c``,
and checkpoints are only taken at those boundaries, so a run resumed from step ``c`` sees the
same batches (and the same RNG states, restored by accelerate) as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from anchorbind.config import config_to_dict
from anchorbind.data.cache import shards_have_anchor_cache
from anchorbind.data.loader import build_loader
from anchorbind.losses.binding import BindingLoss
from anchorbind.model import BindModel
from anchorbind.registry import ANCHOR_MODALITY
from anchorbind.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from anchorbind.train.config import TrainConfig, load_train_config
from anchorbind.train.log import TrainLogger
from anchorbind.train.optim import build_optimizer, build_scheduler

__all__ = ["NonFiniteLossError", "main", "train"]

log = logging.getLogger("anchorbind.train")


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite_steps`` consecutive steps with a NaN/inf loss."""


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for this machine: gloo on CPU, bf16 autocast on GPUs that support it."""
    cpu = not torch.cuda.is_available()
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if not cpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        step_scheduler_with_optimizer=False,
        # a batch may lack a modality entirely, leaving that plugin's parameters unused
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with="tensorboard",
        project_dir=cfg.output_dir,
    )


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable}


def resolve_anchor_source(cfg: TrainConfig, model: BindModel) -> bool:
    """True when training should read cached anchor embeddings instead of running the anchor."""
    if cfg.data.anchor == "live":
        return False
    has_cache = shards_have_anchor_cache(cfg.data.train_shards, model.anchor.identity)
    if cfg.data.anchor == "cache" and not has_cache:
        raise FileNotFoundError(
            f"data.anchor=cache but {cfg.data.train_shards} carry no anchor cache for "
            f"{model.anchor.identity}; run `anchorbind cache` first or set data.anchor=live"
        )
    return has_cache


def segment_batches(cfg: TrainConfig, model: BindModel, start_step: int, use_cache: bool) -> Iterator[Any]:
    """Micro-batches for steps ``[start_step, next checkpoint)``, from a loader seeded by ``start_step``."""
    # processors only (no model): they are what each loader worker gets a copy of
    processors = {name: model.processor(name) for name in model.plugins}
    if not use_cache:
        processors[ANCHOR_MODALITY] = model.processor(ANCHOR_MODALITY)
    loader = build_loader(
        cfg.data.train_shards,
        processors,
        train=True,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.seed * 1_000_003 + start_step,
        use_anchor_cache=use_cache,
        anchor_identity=model.anchor.identity,
    )
    yield from loader


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run training; returns the summary also written to ``output_dir/train_summary.json``."""
    output_dir = Path(cfg.output_dir)
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    model = BindModel.from_config(cfg.model)
    if cfg.compile:
        for plugin in model.plugins.values():
            plugin.trunk.compile()
    counts = count_parameters(model)
    use_cache = resolve_anchor_source(cfg, model)
    loss_fn = BindingLoss(
        weights={m: cfg.loss.weights.get(m, 1.0) for m in model.plugins},
        direct_pairs=[tuple(p) for p in cfg.loss.direct_pairs],
        local_loss=cfg.loss.local_loss,
        gap=cfg.loss.gap,
    )
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    bind_model: BindModel = accelerator.unwrap_model(model)

    state = {"step": 0, "samples": 0, "skipped_steps": 0, "decode_errors": 0}
    checkpoints = output_dir / "checkpoints"
    if resume:
        found = latest_checkpoint(checkpoints)
        if found is None:
            accelerator.print(f"--resume: no checkpoint in {checkpoints}; starting from step 0")
        else:
            state.update(load_checkpoint(accelerator, found))
            accelerator.print(f"resumed from {found} at step {state['step']}")

    logger = TrainLogger(accelerator, output_dir, config=config_to_dict(cfg), resume=state["step"] > 0)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    accelerator.print(
        f"parameters: {counts['trainable']:,} trainable, {counts['frozen']:,} frozen | "
        f"processes: {accelerator.num_processes} | anchor: {'cache' if use_cache else 'live'} | "
        f"global batch: {cfg.data.batch_size * accelerator.num_processes * cfg.optim.grad_accum_steps}"
    )

    consecutive_nonfinite = 0
    progress = tqdm(
        total=cfg.steps, initial=state["step"], disable=not accelerator.is_main_process, desc="train",
        dynamic_ncols=True,
    )
    batches: Iterator[Any] | None = None
    window_start, window_samples = time.perf_counter(), 0
    model.train()
    while state["step"] < cfg.steps:
        if batches is None or state["step"] % cfg.checkpoint_every == 0:
            batches = segment_batches(cfg, bind_model, state["step"], use_cache)
        step_finite, step_samples = True, 0
        for _ in range(cfg.optim.grad_accum_steps):
            batch = next(batches)
            state["decode_errors"] += len(batch.get("errors", ()))
            step_samples += len(batch["__key__"]) * accelerator.num_processes
            with accelerator.accumulate(model):
                out = model(batch)
                terms = loss_fn(out["embeddings"], out["logit_scales"], out["masks"])
                for name, value in out["native"].items():
                    terms[f"native/{name}"] = value
                    terms["loss"] = terms["loss"] + value
                # every process must take the same branch, or the collectives below would hang
                finite = torch.isfinite(terms["loss"].detach()).float()
                step_finite &= accelerator.reduce(finite, reduction="sum").item() == accelerator.num_processes
                if not step_finite:
                    optimizer.zero_grad(set_to_none=True)
                    continue
                accelerator.backward(terms["loss"])
                if accelerator.sync_gradients and cfg.optim.grad_clip_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state["step"] += 1
        state["samples"] += step_samples
        window_samples += step_samples
        progress.update(1)
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
            scalars = {k: accelerator.reduce(v.detach().float(), reduction="mean").item()
                       for k, v in terms.items()}
            scalars.update({f"logit_scale/{m}": float(s.detach()) for m, s in out["logit_scales"].items()})
            scalars["lr"] = scheduler.get_last_lr()[0]
            scalars["samples_per_s"] = window_samples / max(elapsed, 1e-9)
            scalars["skipped_steps"] = state["skipped_steps"]
            scalars["decode_errors"] = state["decode_errors"]
            logger.log(state["step"], scalars)
            progress.set_postfix(loss=f"{scalars['loss']:.4f}", sps=f"{scalars['samples_per_s']:.1f}")
            window_start, window_samples = time.perf_counter(), 0
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps:
            path = save_checkpoint(accelerator, checkpoints, state, keep=cfg.keep_checkpoints)
            if accelerator.is_main_process:
                bind_model.save_pretrained(path / "bind_model")
    progress.close()

    summary = {
        **state,
        "parameters": counts,
        "processes": accelerator.num_processes,
        "anchor_source": "cache" if use_cache else "live",
        "final_loss": float(terms["loss"].detach()) if state["step"] else math.nan,
    }
    if accelerator.is_main_process:
        bind_model.save_pretrained(output_dir / "model")
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
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
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loader workers fork after tokenizing
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.config, overrides)
    train(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    from anchorbind.errors import run_command

    sys.exit(run_command("anchorbind train", main))
