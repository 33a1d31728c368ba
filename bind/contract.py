"""The plugin contract kit: every check a modality plugin must pass, runnable against any installed plugin.

Plugin authors run it from the command line or from their own tests; nothing in AnchorBind is
edited and no test file of AnchorBind is needed::

    anchorbind check-plugin imu                       # PASS/FAIL per check; exit 0 iff all pass
    anchorbind check-plugin imu --config '{"num_samples": 128}' --json

    # in the plugin package's own tests (pytest)
    from anchorbind.contract import assert_plugin_contract

    def test_plugin_contract():
        assert_plugin_contract("imu")

The checks, in order (:data:`CHECKS`):

``registration``
    ``get_plugin_class(name)`` finds it (entry point or ``@register_modality``); ``cls.name`` is
    ``name``; ``Config`` is a :class:`~anchorbind.plugin.PluginConfig` dataclass; ``Processor`` is
    a :class:`~anchorbind.processor.Processor` subclass; ``sample_keys`` is set.
``config``
    defaults (and the given config) -> ``config_to_dict`` -> JSON -> ``from_dict`` is equal; an
    unknown key is a :class:`~anchorbind.errors.ConfigError`.
``processor``
    built from the config alone (``create_processor``); pickles, and the unpickled copy makes
    bit-identical batches of the example inputs (the pickle size is reported: data-loader
    workers receive it).
``example_inputs``
    ``cls.example_inputs()`` gives at least two inputs that the processor loads and collates
    (eval and train mode), with ``batch_size`` equal to their count.
``embeddings``
    the plugin embeds them to ``(N, embed_dim)``, finite, unit L2 norm (within 1e-4), and
    bit-identically twice in eval mode; ``plugin.load_batch`` gives the processor's batch.
``gradients``
    one symmetric InfoNCE loss against random unit targets (plus the weighted native loss, as in
    training): every trainable head parameter gets a finite gradient, every other trainable
    parameter outside the trunk gets one, and at least one trunk parameter gets a non-zero one
    (unless the config freezes the whole trunk, which the detail says).
``save_load``
    the state dict through safetensors into a fresh plugin of the same config: bit-identical
    embeddings.
``bind_model``
    ``BindModel`` (anchor ``{"weights": "none"}``) ``save_pretrained`` / ``from_pretrained``:
    bit-identical embeddings.
``bad_inputs``
    each of ``cls.example_bad_inputs()`` makes ``processor.load`` raise
    :class:`~anchorbind.errors.InputError` with a one-line message.
``native_loss``
    ``None`` or a finite scalar tensor.

A check that raises is a failure carrying the exception's one-line message; the kit itself does
not crash. Checks whose prerequisite failed are reported as failed with ``not run: ...``. Torch's
global RNG is seeded per check (and restored afterwards), so results do not depend on the caller.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKS",
    "DEFAULT_EMBED_DIM",
    "CheckResult",
    "assert_plugin_contract",
    "check_plugin",
    "format_results",
    "main",
]

DEFAULT_EMBED_DIM = 32
"""Embedding width the plugin is built with (the ``bind_model`` check uses the anchor's)."""
NORM_TOLERANCE = 1e-4
"""Largest allowed ``| ||embedding||_2 - 1 |``."""
SEED = 0
UNKNOWN_KEY = "not_a_config_key"


@dataclass
class CheckResult:
    """The outcome of one contract check.

    Attributes:
        name: the check's name (one of :data:`CHECKS`).
        passed: whether it passed.
        detail: what was measured when it passed; the reason (one line) when it failed.
        seconds: wall time the check took.
    """

    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0

    def line(self, width: int = 0) -> str:
        """``PASS name  detail`` / ``FAIL name  detail``."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name:<{width}}  {self.detail}".rstrip()


class CheckFailed(AssertionError):
    """Raised inside a check with the one-line reason it failed."""


@dataclass
class _Context:
    """What the checks learn and hand to the next ones."""

    name: str
    config_arg: Any
    embed_dim: int
    cls: Any = None
    config: Any = None
    processor: Any = None
    inputs: list[Any] | None = None
    batch: Any = None
    train_batch: Any = None
    plugin: Any = None


# ---------------------------------------------------------------------------------------- helpers
def _message(err: BaseException) -> str:
    """The exception's message on one line (at most 400 characters)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text if len(text) <= 400 else text[:397] + "..."


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line; a :class:`CheckFailed` is just its message."""
    text = _message(err)
    if isinstance(err, CheckFailed):
        return text or "failed"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _require(condition: Any, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _size(num_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _difference(a: Any, b: Any, where: str = "batch") -> str | None:
    """Where two batches (tensors, arrays, nested dicts/lists, scalars) differ, or ``None``."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: {type(a).__name__} vs {type(b).__name__}"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{where}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if not torch.equal(a, b):
            if a.is_floating_point():
                diff = (a.double() - b.double()).abs().nan_to_num(nan=math.inf).max().item()
                return f"{where}: values differ (max |diff| {diff:.3g})"
            return f"{where}: values differ"
        return None
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        ok = isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
        return None if ok and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc") else f"{where}: arrays differ"
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            found = _difference(a[key], b[key], f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    try:
        equal = bool(a == b)
    except Exception:  # objects without a usable ==
        equal = a is b
    return None if equal and type(a) is type(b) else f"{where}: {a!r} vs {b!r}"[:200]


def _symmetric_infonce(scale: Any, embeddings: Any, targets: Any) -> Any:
    import torch
    import torch.nn.functional as F

    logits = scale * embeddings @ targets.T
    labels = torch.arange(len(embeddings), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _build_plugin(ctx: _Context, seed: int = SEED) -> Any:
    import torch

    from anchorbind.registry import create_plugin

    torch.manual_seed(seed)
    return create_plugin(ctx.name, ctx.config, embed_dim=ctx.embed_dim)


def _entry_point(name: str) -> Any:
    from importlib.metadata import entry_points

    from anchorbind.registry import ENTRY_POINT_GROUP

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep
    return None


# ---------------------------------------------------------------------------------------- checks
def _check_registration(ctx: _Context) -> str:
    from anchorbind.plugin import ModalityPlugin, PluginConfig
    from anchorbind.processor import Processor
    from anchorbind.registry import get_plugin_class

    cls = get_plugin_class(ctx.name)
    _require(isinstance(cls, type) and issubclass(cls, ModalityPlugin), f"{cls!r} is not a ModalityPlugin subclass")
    _require(cls.name == ctx.name, f"{cls.__qualname__}.name is {cls.name!r}, registered as {ctx.name!r}")
    config_cls = cls.Config
    _require(isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)
             and issubclass(config_cls, PluginConfig),
             f"{cls.__qualname__}.Config ({config_cls!r}) must be a @dataclass subclass of PluginConfig")
    processor_cls = getattr(cls, "Processor", None)
    _require(isinstance(processor_cls, type) and issubclass(processor_cls, Processor),
             f"{cls.__qualname__}.Processor ({processor_cls!r}) must be a subclass of anchorbind.processor.Processor")
    keys = cls.sample_keys
    _require(isinstance(keys, tuple) and keys and all(isinstance(k, str) and k for k in keys),
             f"{cls.__qualname__}.sample_keys must be a non-empty tuple of shard keys, got {keys!r}")
    ctx.cls = cls
    where = f"{cls.__module__}.{cls.__qualname__}"
    ep = _entry_point(ctx.name)
    how = f"entry point {ep.name} = {ep.value}" if ep is not None else "@register_modality"
    return f"{where} via {how}; Config {config_cls.__name__}, Processor {processor_cls.__name__}, keys={','.join(keys)}"


def _round_trip(config_cls: type, config: Any, label: str) -> None:
    from anchorbind.config import config_to_dict, from_dict

    plain = config_to_dict(config)
    try:
        text = json.dumps(plain)
    except TypeError as err:
        raise CheckFailed(f"{label} config is not JSON-serialisable ({err}); config.json could not store it") from None
    back = from_dict(config_cls, json.loads(text), where=label)
    _require(back == config, f"{label} config changes through config_to_dict -> JSON -> from_dict: "
                             f"{config!r} became {back!r}")


def _check_config(ctx: _Context) -> str:
    from anchorbind.config import config_to_dict, from_dict
    from anchorbind.errors import ConfigError
    from anchorbind.registry import create_plugin

    config_cls = ctx.cls.Config
    missing = [f.name for f in dataclasses.fields(config_cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _require(not missing, f"{config_cls.__name__} fields without a default: {missing}")
    _round_trip(config_cls, config_cls(), "default")
    given = ctx.config_arg
    if isinstance(given, config_cls):
        config = given
    elif given is None:
        config = config_cls()
    else:
        if dataclasses.is_dataclass(given) and not isinstance(given, type):
            given = config_to_dict(given)
        config = from_dict(config_cls, given, where=f"modalities.{ctx.name}")
        _round_trip(config_cls, config, "given")
    ctx.config = config
    plain = {**config_to_dict(config), UNKNOWN_KEY: 1}
    for how, make in (("from_dict", lambda: from_dict(config_cls, plain)),
                      ("create_plugin", lambda: create_plugin(ctx.name, plain, embed_dim=ctx.embed_dim))):
        try:
            make()
        except ConfigError as err:
            _require(UNKNOWN_KEY in str(err), f"{how}: the ConfigError for an unknown key does not name it: {err}")
        else:
            raise CheckFailed(f"{how} accepted the unknown config key {UNKNOWN_KEY!r} (expected a ConfigError)")
    fields = len(dataclasses.fields(config_cls))
    return f"{fields} fields round-trip through JSON; unknown key refused with ConfigError"


def _example_inputs(ctx: _Context) -> list[Any]:
    if ctx.inputs is None:
        inputs = ctx.cls.example_inputs()
        ctx.inputs = list(inputs) if inputs is not None else []
    return ctx.inputs


def _check_processor(ctx: _Context) -> str:
    from anchorbind.processor import Processor
    from anchorbind.registry import create_processor

    processor = create_processor(ctx.name, ctx.config)
    _require(isinstance(processor, Processor), f"create_processor returned {type(processor).__name__}, not a Processor")
    _require(type(processor) is ctx.cls.Processor,
             f"create_processor built {type(processor).__name__}, not {ctx.cls.__name__}.Processor")
    description = processor.input_description()
    _require(isinstance(description, str) and description.strip(), "input_description() must be a non-empty string")
    data = pickle.dumps(processor)
    copy = pickle.loads(data)
    _require(type(copy) is type(processor), f"unpickled a {type(copy).__name__}")
    ctx.processor = processor
    try:
        inputs = _example_inputs(ctx)
    except Exception:  # reported by the example_inputs check
        inputs = []
    size = _size(len(data))
    if len(inputs) >= 1:
        difference = _difference(processor.load_batch(inputs), copy.load_batch(inputs))
        _require(difference is None, f"the unpickled processor makes a different batch ({difference})")
        compared = f"identical batches of {len(inputs)} example inputs"
        used = len(pickle.dumps(processor))  # what a DataLoader worker gets from a processor already used
        if _size(used) != size:
            size += f" ({_size(used)} after use)"
    else:
        compared = "batches not compared (no example_inputs)"
    return f"{type(processor).__name__} from config alone; pickle {size}, {compared}"


def _check_example_inputs(ctx: _Context) -> str:
    import torch

    inputs = _example_inputs(ctx)
    _require(len(inputs) >= 2,
             f"{ctx.cls.__qualname__}.example_inputs() returned {len(inputs)} input(s): implement the classmethod "
             "example_inputs() to return at least two valid raw inputs of different content")
    processor = ctx.processor
    batch = processor.load_batch(inputs)
    size = processor.batch_size(batch)
    _require(size == len(inputs), f"batch_size(batch) is {size} for {len(inputs)} inputs")
    again = processor.load_batch(inputs)
    difference = _difference(batch, again)
    _require(difference is None, f"load(train=False) is not deterministic ({difference})")
    torch.manual_seed(SEED)
    train_batch = processor.load_batch(inputs, train=True)
    size = processor.batch_size(train_batch)
    _require(size == len(inputs), f"batch_size(train batch) is {size} for {len(inputs)} inputs")
    ctx.batch, ctx.train_batch = batch, train_batch
    kinds = sorted({type(x).__name__ for x in inputs})
    return f"{len(inputs)} inputs ({', '.join(kinds)}) load and collate (eval and train), batch_size {len(inputs)}"


def _check_embeddings(ctx: _Context) -> str:
    import torch

    plugin = _build_plugin(ctx)
    ctx.plugin = plugin
    from anchorbind.processor import Processor

    own = getattr(plugin, "processor", None)
    _require(isinstance(own, Processor), f"plugin.processor is {type(own).__name__}, not a Processor")
    difference = _difference(plugin.load_batch(ctx.inputs), ctx.batch)
    _require(difference is None,
             f"plugin.load_batch differs from the processor built from the config alone ({difference})")
    n = len(ctx.inputs)
    plugin.eval()
    with torch.no_grad():
        first = plugin(ctx.batch)
        second = plugin(ctx.batch)
    _require(isinstance(first, torch.Tensor), f"forward returned {type(first).__name__}, not a tensor")
    _require(tuple(first.shape) == (n, ctx.embed_dim),
             f"embeddings are {tuple(first.shape)}, expected ({n}, {ctx.embed_dim})")
    _require(first.is_floating_point() and bool(torch.isfinite(first).all()), "embeddings hold NaN/inf")
    error = (first.double().norm(dim=-1) - 1).abs().max().item()
    _require(error <= NORM_TOLERANCE, f"embeddings are not unit L2 norm (max |norm - 1| = {error:.3g}, tolerance "
                                      f"{NORM_TOLERANCE:g}); forward must return l2_normalize(...)")
    difference = _difference(first, second, "embeddings")
    _require(difference is None, f"eval-mode forward is not deterministic ({difference})")
    return f"({n}, {ctx.embed_dim}) finite, max |norm - 1| {error:.1e}, deterministic in eval mode"


def _check_gradients(ctx: _Context) -> str:
    import torch
    import torch.nn.functional as F

    plugin = ctx.plugin
    plugin.train()
    plugin.zero_grad(set_to_none=True)
    n = len(ctx.inputs)
    torch.manual_seed(SEED)
    targets = F.normalize(torch.randn(n, ctx.embed_dim), dim=-1)
    embeddings = plugin(ctx.train_batch)
    loss = _symmetric_infonce(plugin.logit_scale(), embeddings, targets.to(embeddings))
    weight = float(getattr(plugin.config, "native_loss_weight", 0.0) or 0.0)
    native = plugin.native_loss(ctx.train_batch) if weight > 0 else None
    if native is not None:
        loss = loss + weight * native
    _require(bool(torch.isfinite(loss)), f"the InfoNCE loss is not finite ({loss.item()})")
    loss.backward()
    trainable = {pname: p for pname, p in plugin.named_parameters() if p.requires_grad}
    grads = {pname: p.grad for pname, p in trainable.items()}
    try:
        _require(trainable, "no trainable parameter: nothing would learn")
        nonfinite = sorted(k for k, g in grads.items() if g is not None and not bool(torch.isfinite(g).all()))
        _require(not nonfinite, f"non-finite gradients in {nonfinite[:5]}")
        trunk = {k for k in trainable if k.startswith("trunk.")}
        head = {k for k in trainable if k.startswith("head.")}
        _require(head, "the projection head has no trainable parameter")
        no_grad = sorted(k for k in trainable.keys() - trunk if grads[k] is None)
        _require(not no_grad, f"no gradient reaches {no_grad[:5]} (a detached graph, or dead weight)")
        prefix = f"loss {loss.item():.3f}{' (+ native)' if native is not None else ''}; head gradients finite"
        if not trunk:
            frozen = sum(p.numel() for p in plugin.trunk.parameters())
            return f"{prefix}; trunk frozen by config ({frozen:,} parameters, none trainable): not checked"
        reached = sorted(k for k in trunk if grads[k] is not None and bool(grads[k].any()))
        _require(reached, f"no gradient reaches the trunk (its {len(trunk)} trainable tensors get None or zero)")
        return f"{prefix}; {len(reached)}/{len(trunk)} trainable trunk tensors get non-zero gradients"
    finally:
        plugin.zero_grad(set_to_none=True)
        plugin.eval()


def _check_save_load(ctx: _Context) -> str:
    import torch
    from safetensors.torch import load_model, save_model

    plugin = ctx.plugin.eval()
    with torch.no_grad():
        before = plugin(ctx.batch)
    with tempfile.TemporaryDirectory(prefix="anchorbind-contract-") as tmp:
        path = Path(tmp) / "plugin.safetensors"
        save_model(plugin, str(path))
        size = path.stat().st_size
        fresh = _build_plugin(ctx, seed=SEED + 1)
        missing, unexpected = load_model(fresh, str(path), strict=False)
    _require(not missing and not unexpected,
             f"a fresh plugin's state dict does not match: missing {sorted(missing)[:5]}, "
             f"unexpected {sorted(unexpected)[:5]}")
    fresh.eval()
    with torch.no_grad():
        again = fresh(ctx.batch)
    difference = _difference(before, again, "embeddings")
    _require(difference is None, f"the reloaded plugin embeds differently ({difference})")
    return f"state dict ({len(plugin.state_dict())} tensors, {_size(size)}) via safetensors: bitwise equal embeddings"


def _check_bind_model(ctx: _Context) -> str:
    import torch

    from anchorbind.config import config_to_dict
    from anchorbind.model import BindModel

    torch.manual_seed(SEED)
    model = BindModel.from_config(
        {"anchor": {"weights": "none"}, "modalities": {ctx.name: config_to_dict(ctx.config)}}
    ).eval()
    with torch.no_grad():
        before = model.embed({ctx.name: list(ctx.inputs)})[ctx.name]
    with tempfile.TemporaryDirectory(prefix="anchorbind-contract-") as tmp:
        saved = model.save_pretrained(Path(tmp) / "model")
        stored = sum(p.stat().st_size for p in saved.iterdir())
        torch.manual_seed(SEED + 1)
        loaded = BindModel.from_pretrained(saved).eval()
    with torch.no_grad():
        after = loaded.embed({ctx.name: list(ctx.inputs)})[ctx.name]
    _require(tuple(before.shape) == (len(ctx.inputs), model.embed_dim),
             f"BindModel.embed gave {tuple(before.shape)}, expected ({len(ctx.inputs)}, {model.embed_dim})")
    difference = _difference(before, after, "embeddings")
    if difference is not None:
        stored_keys = model.persistent_state_dict().keys()
        reloaded = loaded.state_dict()
        rebuilt = sorted(k for k, v in model.state_dict().items()
                         if k not in stored_keys and _difference(v, reloaded[k]) is not None)
        if rebuilt:
            raise CheckFailed(
                f"from_pretrained embeds differently ({difference}): weights that save_pretrained does not store "
                f"(frozen, rebuilt from the config) came out different, e.g. {rebuilt[:3]}; a frozen trunk must "
                "load pretrained weights or be initialised from a fixed seed"
            )
        raise CheckFailed(f"from_pretrained embeds differently ({difference})")
    return f"save_pretrained ({_size(stored)}) / from_pretrained: bitwise equal ({len(ctx.inputs)}, {model.embed_dim})"


def _check_bad_inputs(ctx: _Context) -> str:
    from anchorbind.errors import InputError, describe_source

    bad = list(ctx.cls.example_bad_inputs() or [])
    _require(bad, f"{ctx.cls.__qualname__}.example_bad_inputs() is empty: return raw inputs that load() must refuse")
    problems = []
    for source in bad:
        label = describe_source(source)
        try:
            ctx.processor.load(source)
        except InputError as err:
            message = str(err)
            if "\n" in message.strip() or not message.strip():
                problems.append(f"{label}: the InputError message is not one line")
        except Exception as err:
            problems.append(f"{label}: raised {_one_line(err)} instead of InputError")
        else:
            problems.append(f"{label}: accepted (expected InputError)")
    _require(not problems, "; ".join(problems))
    return f"{len(bad)} bad input(s) refused with a one-line InputError"


def _check_native_loss(ctx: _Context) -> str:
    import torch

    plugin = ctx.plugin
    plugin.train()
    try:
        torch.manual_seed(SEED)
        value = plugin.native_loss(ctx.train_batch)
    finally:
        plugin.eval()
    if value is None:
        return "None (no native objective)"
    _require(isinstance(value, torch.Tensor), f"native_loss returned {type(value).__name__}, not a tensor or None")
    _require(value.numel() == 1 and value.ndim == 0, f"native_loss must be a scalar, got shape {tuple(value.shape)}")
    _require(bool(torch.isfinite(value)), f"native_loss is not finite ({value.item()})")
    return f"finite scalar {value.item():.4g}"


CHECKS: tuple[tuple[str, Callable[[_Context], str], tuple[str, ...]], ...] = (
    ("registration", _check_registration, ()),
    ("config", _check_config, ("cls",)),
    ("processor", _check_processor, ("cls", "config")),
    ("example_inputs", _check_example_inputs, ("processor",)),
    ("embeddings", _check_embeddings, ("batch",)),
    ("gradients", _check_gradients, ("plugin", "train_batch")),
    ("save_load", _check_save_load, ("plugin", "batch")),
    ("bind_model", _check_bind_model, ("config", "batch")),
    ("bad_inputs", _check_bad_inputs, ("processor",)),
    ("native_loss", _check_native_loss, ("plugin", "train_batch")),
)
"""``(name, check, needs)`` in the order they run; ``needs`` are what earlier checks must have produced."""

_PRODUCED_BY = {"cls": "registration", "config": "config", "processor": "processor", "batch": "example_inputs",
                "train_batch": "example_inputs", "plugin": "embeddings"}
"""Which check produces each of the context's fields (a check that fails may still produce some)."""


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def check_plugin(
    name: str,
    config: Any = None,
    *,
    embed_dim: int = DEFAULT_EMBED_DIM,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run every contract check (:data:`CHECKS`) against the registered plugin ``name``.

    Args:
        name: a registered modality name (entry point or ``@register_modality``).
        config: the plugin config to check with (a mapping of its fields or its Config dataclass);
            ``None`` for the defaults.
        embed_dim: width the plugin projects to.
        on_result: called with each result as soon as it is known (for progress output).

    Returns:
        One :class:`CheckResult` per check, in order. It never raises for a broken plugin: an
        exception inside a check is that check's failure, and checks that need it are failed as
        ``not run``.
    """
    ctx = _Context(name=name, config_arg=config, embed_dim=int(embed_dim))
    results: list[CheckResult] = []
    for check_name, check, needs in CHECKS:
        start = time.perf_counter()
        blocked = list(dict.fromkeys(_PRODUCED_BY[n] for n in needs if getattr(ctx, n) is None))
        if blocked:
            result = CheckResult(check_name, False, f"not run: {', '.join(blocked)} failed")
        else:
            try:
                with _seeded():
                    detail = check(ctx)
                result = CheckResult(check_name, True, detail)
            except Exception as err:
                result = CheckResult(check_name, False, _one_line(err))
        result.seconds = round(time.perf_counter() - start, 3)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def format_results(name: str, results: Sequence[CheckResult]) -> str:
    """One ``PASS``/``FAIL`` line per check and a summary line."""
    width = max((len(r.name) for r in results), default=0)
    return "\n".join([*(r.line(width) for r in results), summary_line(name, results)])


def summary_line(name: str, results: Sequence[CheckResult]) -> str:
    failed = [r.name for r in results if not r.passed]
    seconds = sum(r.seconds for r in results)
    if not failed:
        return f"{name}: all {len(results)} checks passed ({seconds:.1f} s)"
    return f"{name}: {len(results) - len(failed)}/{len(results)} checks passed; FAILED: {', '.join(failed)}"


def assert_plugin_contract(name: str, config: Any = None, *, embed_dim: int = DEFAULT_EMBED_DIM) -> list[CheckResult]:
    """Run :func:`check_plugin` and raise ``AssertionError`` listing every failed check.

    For a plugin package's own tests::

        from anchorbind.contract import assert_plugin_contract

        def test_plugin_contract():
            assert_plugin_contract("imu")                       # defaults
            assert_plugin_contract("imu", {"num_samples": 64})  # another config

    Returns:
        The results (all passed).
    """
    results = check_plugin(name, config, embed_dim=embed_dim)
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n".join(f"  {r.name}: {r.detail}" for r in failed)
        raise AssertionError(f"plugin {name!r} fails {len(failed)} contract check(s):\n{lines}\n"
                             f"{format_results(name, results)}")
    return results


# ---------------------------------------------------------------------------------------- command line
def _read_config(text: str) -> Any:
    """A config from a YAML/JSON file path or an inline JSON object."""
    from anchorbind.errors import ConfigError

    path = Path(text)
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"--config {text}: cannot read ({_one_line(err)})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config {text!r}: neither a file nor a JSON object ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config {text!r}: expected a mapping of the plugin's config fields")
    return dict(data)


def main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind check-plugin NAME [--config FILE_OR_JSON] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="anchorbind check-plugin",
        description="Run the plugin contract checks against an installed modality plugin "
                    "(exit 0 if all pass, 1 if any fails, 2 for an unknown plugin or a bad config).",
    )
    parser.add_argument("name", metavar="NAME", help="the plugin's registered modality name")
    parser.add_argument("--config", metavar="FILE_OR_JSON",
                        help="plugin config: a YAML/JSON file or an inline JSON object (default: its defaults)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (for a plugin registered with @register_modality); repeatable")
    parser.add_argument("--embed-dim", type=int, default=DEFAULT_EMBED_DIM, help="embedding width to build with")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    prog = parser.prog

    import importlib

    from anchorbind.errors import AnchorBindError
    from anchorbind.registry import get_plugin_class

    def error(message: str) -> int:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2

    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as err:
            return error(f"cannot import {module!r}: {_one_line(err)}")
    try:
        config = _read_config(args.config) if args.config is not None else None
    except AnchorBindError as err:
        return error(_message(err))
    try:
        cls = get_plugin_class(args.name)
    except AnchorBindError as err:
        if _entry_point(args.name) is None:  # declared but broken: a failing registration check below
            return error(_message(err))
    else:
        if config is not None:
            from anchorbind.config import from_dict

            try:
                from_dict(cls.Config, config, where=f"--config for {args.name}")
            except AnchorBindError as err:
                return error(_message(err))

    if args.json:
        results = check_plugin(args.name, config, embed_dim=args.embed_dim)
        print(json.dumps({
            "plugin": args.name,
            "passed": all(r.passed for r in results),
            "checks": [dataclasses.asdict(r) for r in results],
        }, indent=2))
    else:
        width = max(len(n) for n, _, _ in CHECKS)
        results = check_plugin(args.name, config, embed_dim=args.embed_dim,
                               on_result=lambda r: print(r.line(width), flush=True))
        print(summary_line(args.name, results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
