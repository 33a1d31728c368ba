"""``anchorbind eval``: turn a trained run into findings, written to ``RUN_DIR/metrics.json``.

    anchorbind eval runs/demo/bind --shards runs/demo/world/test \\
        --baseline runs/demo/direct --compare runs/demo/bind_mitigated

Sections (every key is documented in ``docs/metrics.md``): retrieval for every ordered modality
pair labelled trained / emergent / direct, the emergent-vs-direct comparison with chance levels,
zero-shot classification through prompts (embedded by the plugin that encodes text),
embedding arithmetic scored against the ground truth, group-wise structure, the modality gap
and the shift experiment, alignment (also across checkpoints, against retrieval) and
visiocentrism. The embeddings are stored beside the metrics
(``embeddings_test.safetensors``) so that ``anchorbind report`` needs no model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from anchorbind.errors import (
    AnchorBindError,
    ConfigError,
    InputError,
    ModelFileError,
    UnknownModalityError,
    debug_enabled,
    exit_code,
)
from anchorbind.evaluation.alignment import alignment_section
from anchorbind.evaluation.arithmetic import arithmetic_section
from anchorbind.evaluation.checkpoint_alignment import checkpoint_alignment
from anchorbind.evaluation.extract import EmbeddingSet, Reuse, embed_share, extract_embeddings, merge_shares
from anchorbind.evaluation.gap import gap_section
from anchorbind.evaluation.groupwise import groupwise_section
from anchorbind.evaluation.processes import EvalProcesses, launched_processes, launched_rank, one_process
from anchorbind.evaluation.protocols import protocol_section
from anchorbind.evaluation.retrieval import compare_with_direct, pair_retrieval
from anchorbind.evaluation.schema import (
    DEFAULT_LABEL,
    attribute_labels,
    carried_by_omits,
    declared_label,
    unobserved_attributes,
)
from anchorbind.evaluation.shard_check import check_shards, member_readers
from anchorbind.evaluation.split_cache import SplitAnchorCache
from anchorbind.evaluation.visiocentrism import visiocentrism_section
from anchorbind.evaluation.zeroshot import zero_shot_section
from anchorbind.model import BindModel
from anchorbind.model_card import update_headline
from anchorbind.registry import ANCHOR_MODALITY, text_modalities

__all__ = ["EMBEDDINGS_FILE", "METRICS_FILE", "EvalConfig", "StageTimes", "evaluate_run", "headline", "main"]

EMBEDDINGS_FILE = "embeddings_test.safetensors"
METRICS_FILE = "metrics.json"
MAX_ERROR_EXAMPLES = 20


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved training config (``{}`` for a model saved without one).

    A run without a model is a data problem (exit 1), as is an unreadable ``config.yaml``.
    """
    if not (run_dir / "model" / "config.json").is_file():
        raise ModelFileError(f"{run_dir}: no trained model (expected {run_dir / 'model' / 'config.json'}); "
                             "pass the output_dir of `anchorbind train`")
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ModelFileError(f"{path}: unreadable run config ({' '.join(str(err).split())})") from err
    if config is not None and not isinstance(config, dict):
        raise ModelFileError(f"{path}: unreadable run config (a {type(config).__name__}, not a mapping)")
    return config or {}


def _load_model(run_dir: Path) -> BindModel:
    """``run_dir/model``; a saved config that no longer builds (bad key, plugin not installed) is a damaged model."""
    try:
        return BindModel.from_pretrained(run_dir / "model")
    except (ConfigError, UnknownModalityError) as err:
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{run_dir / 'model'}: the saved model cannot be rebuilt ({err})") from err


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


Embedded = tuple[BindModel, dict[str, Any], EmbeddingSet, dict[str, int]]
"""A run's model, its training config, its embeddings of the split and the modalities left out."""


def _require_rows(shards: str, emb: EmbeddingSet) -> None:
    if not emb.keys:
        raise InputError(str(shards), f"no sample could be read ({len(emb.errors)} decode errors"
                                      + (f", first: {emb.errors[0]}" if emb.errors else "") + ")")


def _load_and_embed(run_dir: Path, shards: str, *, ignore: Sequence[str], batch_size: int, num_workers: int,
                    device: torch.device) -> Embedded:
    config = _run_config(run_dir)
    model = _load_model(run_dir).to(device).eval()
    ignored = check_shards(shards, model.modalities, ignore=ignore, source=f"the model in {run_dir}")
    cache = SplitAnchorCache.for_split(shards, model.anchor.identity) if ANCHOR_MODALITY in model.modalities else None
    reuse = cache.load() if cache is not None else None
    emb = extract_embeddings(model, shards, batch_size=batch_size, num_workers=num_workers, reuse=reuse)
    _require_rows(shards, emb)
    if cache is not None and reuse is None:
        cache.save(emb)  # the next evaluation of this split with this anchor takes the anchor's rows
    return model, config, emb, ignored


def _load_and_embed_together(processes: EvalProcesses, run_dir: Path, shards: str, *, ignore: Sequence[str],
                             batch_size: int, num_workers: int, device: torch.device) -> Embedded | None:
    """:func:`_load_and_embed` by every launched process: each loads the model and embeds its share
    of the shards; the main process gets the whole split (None in the others). Every process
    calls it; an error in any is raised in all. Empty splits are for the caller to refuse."""
    config, model = processes.everywhere(lambda: (_run_config(run_dir), _load_model(run_dir).to(device).eval()))
    ignored = processes.main_first(
        lambda: check_shards(shards, model.modalities, ignore=ignore, source=f"the model in {run_dir}"))
    share = processes.everywhere(lambda: embed_share(model, shards, batch_size=batch_size, num_workers=num_workers,
                                                     progress=processes.is_main))
    shares = processes.gather_on_main(share)
    if shares is None:
        return None
    return model, config, merge_shares(shares), ignored or {}


def _decode_errors(emb: EmbeddingSet) -> dict[str, Any]:
    return {"count": len(emb.errors),
            "by_modality": dict(Counter(str(e.get("modality")) for e in emb.errors)),
            "examples": emb.errors[:MAX_ERROR_EXAMPLES]}


def _stage(name: str) -> None:
    """One progress line per analysis section: some take a minute on a CPU (cross-validated probes)."""
    print(f"eval: {name}", file=sys.stderr, flush=True)


class StageTimes:
    """Wall-clock seconds of named stages: evaluation's ``metrics.json`` ``timings_s`` and the demo's
    ``demo_summary.json`` ``timings_s`` (where the time goes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._began = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str, progress: str | None = None) -> Iterator[None]:
        """Time the block as ``name`` (added to an earlier block of that name); print ``progress`` first."""
        if progress is not None:
            _stage(progress)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def summary(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self._began, 3)}


def _mitigation(model: BindModel) -> dict[str, float]:
    return {name: float(plugin.config.native_loss_weight) for name, plugin in model.plugins.items()}


def _jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False))
    os.replace(tmp, path)


def _compare_block(other_dir: Path, shards: str, config: EvalConfig) -> dict[str, Any]:
    """Visiocentrism of another run on the same shards (evaluated now unless it already was)."""
    path = other_dir / METRICS_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = {}  # unreadable: evaluated again below
    if data.get("shards") != str(shards) or "visiocentrism" not in data:
        data = evaluate_run(other_dir, shards, replace(config, baselines=(), compare=(), checkpoint_samples=0,
                                                        ignore_modalities=tuple(member_readers())))
    vis = data.get("visiocentrism", {})
    return {
        "native_loss_weights": data.get("native_loss_weights", {}),
        "uses_mitigation": data.get("uses_mitigation"),
        "visiocentrism_index": vis.get("index", {}),
        "visiocentrism_summary": vis.get("summary", {}),
        "probes": vis.get("probes", {}),
    }


@dataclass(frozen=True)
class EvalConfig:
    """How ``anchorbind eval`` runs: what to compare against, how to load, where to compute.

    Attributes:
        baselines: runs evaluated on the same shards whose pairs are reported under ``baselines``;
            a pair they trained directly is compared with the same pair emergent here.
        compare: runs whose visiocentrism is shown beside this run's (e.g. with and without the
            mitigation objective); evaluated first when they have no metrics for these shards.
        batch_size: loader batch size.
        num_workers: loader worker processes (0: load in the main process).
        checkpoint_samples: samples embedded per checkpoint for alignment vs retrieval across
            checkpoints (0 skips the sweep).
        ignore_modalities: modalities the shards carry that the model may lack without error.
        label_attribute: the JSON attribute used as the category label (``--label``); None: the
            one the samples' JSON names (``label_attribute``, written by ``anchorbind shards
            --label-from-folder / --label-column``), else ``category``.
        device: where models run and similarities are computed (``auto``: CUDA if present).
        protocol: the published protocol to run (:mod:`anchorbind.evaluation.protocols`):
            ``auto`` (the one the shards declare, e.g. ESC-50's folds after ``anchorbind shards
            --format esc50``), ``none``, or a dataset name that must match the declared one.
    """

    baselines: tuple[str, ...] = ()
    compare: tuple[str, ...] = ()
    batch_size: int = 128
    num_workers: int = 2
    checkpoint_samples: int = 300
    ignore_modalities: tuple[str, ...] = ()
    label_attribute: str | None = None
    device: str = "auto"
    protocol: str = "auto"

    def __post_init__(self) -> None:
        for name in ("baselines", "compare", "ignore_modalities"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        problems = [f"{key} must be >= {low}, got {value}" for key, value, low in (
            ("batch_size", self.batch_size, 1), ("num_workers", self.num_workers, 0),
            ("checkpoint_samples", self.checkpoint_samples, 0)) if value < low]
        if self.label_attribute is not None and not self.label_attribute:
            problems.append("label_attribute must not be empty")
        if problems:
            raise ConfigError("invalid evaluation config: " + "; ".join(problems))


def _resolve_label(emb: EmbeddingSet, given: str | None, notes: list[str]) -> tuple[str, str]:
    """The label attribute and where it came from: ``option`` (``--label``), ``data`` (the samples'
    ``label_attribute``) or ``default`` (``category``); notes what the data assumes and lacks."""
    declared = declared_label(emb.meta)
    if given is not None:
        label, source = given, "option"
    else:
        label, source = (declared, "data") if declared else (DEFAULT_LABEL, "default")
    rows = np.arange(len(emb.keys))
    if attribute_labels(emb.meta, rows, label) is None:
        records = [r.get("attributes") if r else None for r in emb.meta]
        common = ([] if not records or not all(isinstance(a, dict) for a in records)
                  else [name for name in records[0] if all(name in a for a in records[1:])])
        hint = (f"attributes every sample has: {', '.join(map(str, common))} (pick one with --label NAME)" if common
                else "label the data with `anchorbind shards --label-from-folder` or `--label-column NAME`")
        notes.append(f"label {label!r}: not every sample's JSON has attributes.{label}, so retrieval is at "
                     f"instance level only and zero-shot and the category analyses are skipped; {hint}")
    unobserved = unobserved_attributes(emb.meta)
    if unobserved:
        notes.append(f"attribute{'s' if len(unobserved) > 1 else ''} {', '.join(unobserved)}: the samples' JSON "
                     "gives no observability, so each is assumed carried by every modality (group 'shared') in the "
                     "visiocentrism probes, retrieval by attribute and arithmetic")
    for name in emb.modalities:
        if bool(emb.masks[name].any()) and carried_by_omits(emb.meta, name):
            notes.append(f"{name}: the samples' carried_by never names it; what it carries is taken from each "
                         "attribute's observability and what its plugin perceives")
    return label, source


def evaluate_run(run_dir: str | Path, shards: str, config: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate ``run_dir`` on ``shards``; writes ``metrics.json`` and the embeddings, returns the metrics.

    Under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1) every process calls
    it, once per launch (:mod:`anchorbind.evaluation.processes`): each embeds its share of the
    shards for the run and each baseline, the main process gathers the shares and alone evaluates
    the whole split and writes the files. Rows are in shard order either way, so the metrics equal
    a single process's.

    Args:
        run_dir: a training run (``model/``, ``config.yaml``, ``checkpoints/``, ``train_log.csv``).
        shards: evaluation shards (directory, brace notation or URLs).
        config: how to evaluate (:class:`EvalConfig`; defaults when None).

    Returns:
        The content of ``metrics.json`` (under a launcher: in the main process; the others
        return an empty dict).

    Raises:
        ModelFileError: ``run_dir`` (or a baseline / compare run) holds no trained model, or a
            damaged one (unreadable files, a saved config that no longer builds).
        InputError: the shards name nothing, hold no readable sample, carry a modality the
            model has no plugin for (unless listed in ``ignore_modalities``), or carry none of
            the modalities the model's plugins embed.
    """
    config = config or EvalConfig()
    if launched_processes() > 1:
        return _evaluate_across_processes(Path(run_dir), shards, config)
    return _evaluate(Path(run_dir), shards, config)


def _evaluate_across_processes(run_dir: Path, shards: str, config: EvalConfig) -> dict[str, Any]:
    """Every launched process embeds its share (run and baselines); the main process evaluates."""
    processes = EvalProcesses()
    device = processes.device if config.device in (None, "auto") else _resolve_device(config.device)
    options = {"batch_size": config.batch_size, "num_workers": config.num_workers, "device": device}
    times = StageTimes()
    try:
        with times.stage("load_and_embed"):
            run = _load_and_embed_together(processes, run_dir, shards, ignore=config.ignore_modalities, **options)
        # a baseline is a reference for the pairs it has: whatever else the shards carry is recorded
        with times.stage("embed_baselines"):
            baselines = {base: _load_and_embed_together(processes, Path(base), shards,
                                                        ignore=list(member_readers()), **options)
                         for base in config.baselines}
    finally:
        processes.finish()  # the main process carries on alone; the others are done
    if run is None:
        return {}
    with one_process():  # checkpoints and --compare runs: the main process reads every shard itself
        return _evaluate(run_dir, shards, config, device=device, embedded=run,
                         baselines_embedded={k: v for k, v in baselines.items() if v is not None}, times=times)


def _evaluate(run_dir: Path, shards: str, config: EvalConfig, *, device: torch.device | None = None,
              embedded: Embedded | None = None, baselines_embedded: dict[str, Embedded] | None = None,
              times: StageTimes | None = None) -> dict[str, Any]:
    """:func:`evaluate_run` in one process; ``embedded`` / ``baselines_embedded``: already embedded (their
    time in ``times``)."""
    eval_config = config
    baselines, compare = config.baselines, config.compare
    batch_size, num_workers, checkpoint_samples = config.batch_size, config.num_workers, config.checkpoint_samples
    ignore_modalities, label_attribute = config.ignore_modalities, config.label_attribute
    config_protocol = config.protocol
    device = _resolve_device(config.device) if device is None else device
    baselines_embedded = baselines_embedded or {}
    times = times or StageTimes()
    if embedded is None:
        with times.stage("load_and_embed"):
            embedded = _load_and_embed(run_dir, shards, ignore=ignore_modalities, batch_size=batch_size,
                                       num_workers=num_workers, device=device)
    model, config, emb, ignored = embedded  # from here, config is the run's training config
    _require_rows(shards, emb)
    emb.save(run_dir / EMBEDDINGS_FILE)
    loss_cfg = config.get("loss", {}) or {}
    notes: list[str] = []
    for name in emb.modalities:
        if not bool(emb.masks[name].any()):
            notes.append(f"{name}: the model embeds it but no evaluated sample has it")
    label_attribute, label_source = _resolve_label(emb, label_attribute, notes)
    weights = _mitigation(model)
    metrics: dict[str, Any] = {
        "run": str(run_dir), "shards": str(shards), "num_samples": len(emb.keys),
        "label_attribute": label_attribute, "label_source": label_source,
        "modalities": {m: int(emb.masks[m].sum()) for m in emb.modalities},
        "ignored_modalities": ignored,
        "decode_errors": _decode_errors(emb),
        "anchor_identity": model.anchor.identity,
        "loss": loss_cfg,
        "native_loss_weights": weights,
        "uses_mitigation": any(w > 0 for w in weights.values()),
    }
    with times.stage("retrieval", "retrieval"):
        metrics["retrieval"] = pair_retrieval(emb, loss_cfg, label_attribute=label_attribute, device=device,
                                              notes=notes)
    metrics["baselines"], metrics["emergent_vs_direct"] = {}, {}
    with times.stage("baselines"):
        _evaluate_baselines(metrics, baselines, baselines_embedded, shards, label_attribute, batch_size,
                            num_workers, device)
    with times.stage("zero_shot", "zero-shot, arithmetic, group-wise structure"):
        metrics["zero_shot"] = zero_shot_section(model, emb, label_attribute=label_attribute, notes=notes)
    with times.stage("protocols"):
        metrics["protocols"] = protocol_section(model, emb, protocol=config_protocol, notes=notes)
    with times.stage("arithmetic"):
        metrics["arithmetic"] = arithmetic_section(emb, label_attribute=label_attribute, notes=notes)
    with times.stage("groupwise"):
        metrics["groupwise"] = groupwise_section(emb, label_attribute=label_attribute, notes=notes)
    with times.stage("gap", "modality gap and the shift experiment, alignment"):
        metrics["gap"], metrics["gap_shift"] = gap_section(emb, label_attribute=label_attribute, device=device,
                                                           notes=notes)
    with times.stage("alignment"):
        metrics["alignment"] = alignment_section(emb, notes=notes)
    anchor_identity = model.anchor.identity
    del model
    if checkpoint_samples > 0:
        with times.stage("alignment_across_checkpoints",
                         f"alignment across checkpoints ({checkpoint_samples} samples each)"):
            metrics["alignment_across_checkpoints"] = checkpoint_alignment(
                run_dir, shards, max_samples=checkpoint_samples, batch_size=batch_size, num_workers=num_workers,
                device=device, label_attribute=label_attribute, reuse=Reuse(emb, anchor_identity))
    else:
        metrics["alignment_across_checkpoints"] = {}
        notes.append("alignment_across_checkpoints: skipped (checkpoint_samples=0)")
    with times.stage("visiocentrism", "visiocentrism probes"):
        metrics["visiocentrism"] = visiocentrism_section(emb, loss_cfg, notes=notes)
    with times.stage("compare"):
        metrics["compare"] = {
            str(other): _compare_block(Path(other), shards, eval_config)
            for other in compare
        }
    metrics["notes"] = notes
    metrics["headline"] = headline(metrics, text_queries=text_modalities(emb.modalities))
    metrics["timings_s"] = times.summary()
    metrics = _jsonable(metrics)
    _write_json(run_dir / METRICS_FILE, metrics)
    update_headline(run_dir / "model", metrics)  # the model card's headline table, when the run has one
    return metrics


def _evaluate_baselines(metrics: dict[str, Any], baselines: Sequence[str], baselines_embedded: dict[str, Embedded],
                        shards: str, label_attribute: str, batch_size: int, num_workers: int,
                        device: torch.device) -> None:
    """``metrics["baselines"]`` and ``metrics["emergent_vs_direct"]`` for each directly trained baseline run."""
    for base in baselines:
        base_dir = Path(base)
        if base in baselines_embedded:
            _, base_cfg, base_emb, base_ignored = baselines_embedded[base]
            _require_rows(shards, base_emb)
        else:
            _, base_cfg, base_emb, base_ignored = _load_and_embed(
                # a baseline is a reference for the pairs it has: whatever else the shards carry is recorded
                base_dir, shards, ignore=list(member_readers()), batch_size=batch_size, num_workers=num_workers,
                device=device)
        base_retrieval = pair_retrieval(base_emb, base_cfg.get("loss", {}) or {}, label_attribute=label_attribute,
                                        device=device)
        metrics["baselines"][str(base_dir)] = {"retrieval": base_retrieval, "ignored_modalities": base_ignored,
                                               "decode_errors": _decode_errors(base_emb)}
        for pair, block in compare_with_direct(metrics["retrieval"], base_retrieval, str(base_dir)).items():
            metrics["emergent_vs_direct"].setdefault(pair, block)


def headline(metrics: dict[str, Any], *, text_queries: Sequence[str] | None = None) -> dict[str, float | None]:
    """The handful of numbers the demo prints and the report's headline table starts from.

    Trained pairs are shown towards the anchor; an emergent pair in one direction (alphabetical),
    and in both when the query is a modality that ``encodes_text`` (``text_queries``; found from
    the installed plugins of ``metrics["modalities"]`` when None), since retrieval by caption is
    the use case. Retrieval is at category level when the data has the label, otherwise at
    instance level (the true pair only); each key names its level (``... category R@1``,
    ``... instance R@1``).
    """
    out: dict[str, float | None] = {}
    retrieval = metrics["retrieval"]
    if text_queries is None:
        text_queries = text_modalities(metrics.get("modalities", {}))
    for kind in ("trained", "emergent"):
        for pair, block in retrieval.items():
            query, gallery = pair.split("->")
            shown = gallery == ANCHOR_MODALITY if kind == "trained" else query < gallery or query in text_queries
            if block["kind"] == kind and shown:
                level = "category" if "category/R@1" in block else "instance"
                out[f"{kind} {pair} {level} R@1"] = block.get(f"{level}/R@1")
    for pair, block in metrics.get("emergent_vs_direct", {}).items():
        level = "category" if "direct/category/R@1" in block else "instance"
        out[f"direct {pair} {level} R@1"] = block.get(f"direct/{level}/R@1")
        out[f"emergent/direct {pair} {level} R@1"] = block.get(f"ratio/{level}/R@1")
        out[f"chance {pair} {level} R@1"] = block.get(f"chance/{level}/R@1")
    for name, block in metrics.get("zero_shot", {}).items():
        if isinstance(block, dict):
            out[f"zero-shot {name} acc@1"] = block.get("acc@1")
    for name, block in metrics.get("gap", {}).items():
        if name.startswith(f"{ANCHOR_MODALITY}-"):
            out[f"gap {name} centroid distance"] = block.get("centroid_distance")
    for name, value in metrics.get("visiocentrism", {}).get("index", {}).items():
        if value is not None:
            out[f"visiocentrism index {name}"] = value
    for run, block in metrics.get("compare", {}).items():
        for name, value in block.get("visiocentrism_index", {}).items():
            if value is not None:
                out[f"visiocentrism index {name} ({Path(run).name})"] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchorbind eval", description=__doc__.split("\n\n")[0],
                                     epilog="metrics.json is documented in docs/metrics.md")
    parser.add_argument("run_dir", type=Path, help="a training run's output_dir (with --model: where to write)")
    parser.add_argument("--shards", required=True, help="evaluation shards (directory, braces or URLs)")
    parser.add_argument("--model", metavar="MODEL_DIR",
                        help="evaluate a saved model that no run of this machine trained (an imported ImageBind, a "
                             "Hub id): it is saved as RUN_DIR/model (large files hard-linked) and evaluated there")
    parser.add_argument("--baseline", action="append", default=[], metavar="RUN_DIR",
                        help="a run evaluated on the same shards, e.g. trained with direct pairs (repeatable)")
    parser.add_argument("--compare", action="append", default=[], metavar="RUN_DIR",
                        help="a run whose visiocentrism is shown beside this one, e.g. with/without the "
                             "mitigation objective (repeatable)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--max-samples", "--checkpoint-samples", dest="checkpoint_samples", type=int, default=300,
                        help="samples embedded per checkpoint in the alignment-vs-retrieval sweep (0 skips it)")
    parser.add_argument("--ignore-modality", action="append", default=[], metavar="NAME",
                        help="a modality the shards carry but the model lacks, to leave out (repeatable)")
    parser.add_argument("--label", "--label-attribute", dest="label_attribute", default=None, metavar="NAME",
                        help="the attribute used as the category (json attributes.NAME); default: the one the "
                             "shards name (label_attribute, from `anchorbind shards --label-from-folder` or "
                             f"--label-column), else {DEFAULT_LABEL}")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--protocol", default="auto",
                        help="a standard dataset's published protocol: auto (the one the shards declare, after "
                             "`anchorbind shards --format ...`), none, or its name (esc50, clotho, ...)")
    return parser


def _levels_legend(metrics: dict[str, Any]) -> str:
    """One line saying what the headline's levels mean and which label was used."""
    label, source = metrics["label_attribute"], metrics.get("label_source", "option")
    origin = {"option": "--label", "data": "named by the shards", "default": "the default"}.get(source, source)
    levels = {key.split(" R@")[0].rsplit(" ", 1)[-1] for key in metrics["headline"] if " R@" in key}
    meaning = []
    if "category" in levels:
        meaning.append(f"category R@1: a gallery item with the query's {label} counts")
    if "instance" in levels:
        meaning.append(f"instance R@1: only the query's own pair counts (no {label} label in every sample)")
    return f"label: {label} ({origin})" + "".join(f"; {m}" for m in meaning)


def _adopt_model(model: str, run_dir: Path) -> None:
    """Make ``run_dir`` a run holding ``model`` (a folder or Hub id) so that it evaluates like a trained one.

    Raises:
        ConfigError: ``run_dir`` already holds a different model.
    """
    target = run_dir / "model"
    if target.exists():
        if Path(model).is_dir() and (target.resolve() == Path(model).resolve()):
            return
        raise ConfigError(f"{run_dir}: already holds a model ({target}); evaluate it without --model, or choose "
                          "another RUN_DIR")
    run_dir.mkdir(parents=True, exist_ok=True)
    BindModel.from_pretrained(model).save_pretrained(target)


def main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind eval``; errors follow the CLI convention (:func:`anchorbind.errors.run_command`)."""
    args = build_parser().parse_args(argv)
    config = EvalConfig(baselines=args.baseline, compare=args.compare, batch_size=args.batch_size,
                        num_workers=args.num_workers, checkpoint_samples=args.checkpoint_samples,
                        ignore_modalities=args.ignore_modality, label_attribute=args.label_attribute,
                        device=args.device, protocol=args.protocol)
    main_process = launched_rank() == 0
    try:
        if args.model and launched_processes() > 1:  # the main process writes it, the others wait
            EvalProcesses().main_first(lambda: _adopt_model(args.model, args.run_dir))
        elif args.model:
            _adopt_model(args.model, args.run_dir)
        metrics = evaluate_run(args.run_dir, args.shards, config)
    except AnchorBindError as err:
        if not main_process and not debug_enabled():
            return exit_code(err)  # under a launcher the main process reports it, once
        raise
    if not main_process:
        return 0  # its share is with the main process, which writes metrics.json
    print(_levels_legend(metrics))
    width = max((len(k) for k in metrics["headline"]), default=10)
    for key, value in metrics["headline"].items():
        print(f"{key:<{width}}  {'-' if value is None else f'{value:.3f}':>8}")
    for block in metrics.get("protocols", {}).values():  # as the papers' tables print them
        for key, value in block.get("table", {}).items():
            print(f"{key}: {value:.1f}")
    for note in metrics["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.run_dir / METRICS_FILE}")
    return 0
