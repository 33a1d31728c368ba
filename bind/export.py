"""Export one encoder of a :class:`~anchorbind.model.BindModel` to ONNX or a ``torch.export`` program.

``anchorbind export MODEL --modality M --format onnx|torch-export --out PATH`` (or
:func:`export_encoder`) writes the encoder of one modality — a plugin, or the frozen anchor for
``image`` — *without* its processor: the exported program takes the collated batch tensors that
the modality's :class:`~anchorbind.processor.Processor` makes from raw inputs (``input_ids`` and
``attention_mask`` for text, ``(B, clips, 1, mel, frames)`` for audio, ``(B, 1, H, W)`` for depth,
``(B, 3, H, W)`` for images) and returns the unit-norm embeddings ``(B, embed_dim)``.

How it works, for any plugin (no modality is special-cased):

1. the plugin class's ``example_inputs()`` (synthetic images for the anchor) are read and
   collated by the processor: that batch is the example the program is traced with;
2. a dict batch is flattened into positional tensors in the processor's key order (recorded);
3. the batch dimension is always dynamic; any other dimension that differs between the
   processor's batches of single examples (the token count of text) is dynamic too, the rest
   are fixed (the spectrogram and image sizes);
4. ``torch.export.export`` captures the program (strict about data-dependent control flow:
   what it cannot capture is an error, never a silently frozen branch). ``torch-export`` saves
   it as a ``.pt2``; ``onnx`` translates the same program with torch's dynamo ONNX exporter
   (``onnxscript``);
5. the written file is loaded back (``torch.export.load`` / onnxruntime) and compared with
   PyTorch on the example batch, a one-sample batch and a batch one larger; a difference above
   ``atol`` is an error and nothing is written.

Next to the program, ``PATH`` with the suffix ``.json`` describes the inputs (names, dtypes,
shapes with named dynamic dimensions), the output, and the processor config that reproduces
the preprocessing (``anchorbind.registry.create_processor(modality, config)``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import keyword
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anchorbind.config import config_to_dict
from anchorbind.errors import AnchorBindError, ConfigError
from anchorbind.registry import ANCHOR_MODALITY

__all__ = ["FORMATS", "ExportError", "ExportResult", "example_sources", "export_encoder", "main"]

log = logging.getLogger(__name__)

FORMATS: dict[str, str] = {"onnx": ".onnx", "torch-export": ".pt2"}
"""Supported ``--format`` values and the file suffix each conventionally has."""
EXPORT_FORMAT_VERSION = 1
OUTPUT_NAME = "embeddings"
BATCH_DIM = "batch"
ONNX_OPSET = 18
DEFAULT_ATOL = 1e-4
EXTRA_HINT = 'pip install -c constraints.txt -e ".[export]" (or pip install onnx onnxruntime onnxscript)'


class ExportError(AnchorBindError, RuntimeError):
    """An encoder cannot be exported in the asked format, or the export does not reproduce PyTorch."""


@dataclass
class ExportResult:
    """What :func:`export_encoder` wrote and how well it matched PyTorch."""

    path: Path
    metadata_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        return float(self.metadata["verification"]["max_abs_diff"])


# ---------------------------------------------------------------------- example inputs
def example_sources(model: Any, modality: str) -> list[Any]:
    """Raw example inputs of ``modality``: the plugin class's ``example_inputs()``.

    The anchor has no plugin class; for it, three seeded RGB arrays of different sizes and
    content stand in (the image processor resizes and crops them).

    Raises:
        ExportError: the plugin declares no example inputs.
    """
    if modality == ANCHOR_MODALITY:
        rng = np.random.default_rng(0)
        sizes = ((48, 64), (80, 60), (64, 64))
        return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    examples = list(type(model.plugin(modality)).example_inputs())
    if len(examples) < 2:
        raise ExportError(
            f"modality {modality!r}: its plugin class declares {len(examples)} example_inputs(); export needs "
            "at least two to trace and verify the encoder"
        )
    return examples


# ---------------------------------------------------------------------- flattening batches
def _input_names(batch: Any, modality: str) -> list[str] | None:
    """The dict batch's keys in order (``None`` for a plain tensor batch); other batches are refused."""
    if isinstance(batch, torch.Tensor):
        return None
    if isinstance(batch, Mapping) and batch and all(isinstance(v, torch.Tensor) for v in batch.values()):
        return [str(k) for k in batch]
    kind = type(batch).__name__
    if isinstance(batch, Mapping):
        kind = "dict of " + ", ".join(sorted({type(v).__name__ for v in batch.values()}) or ["nothing"])
    raise ExportError(
        f"modality {modality!r}: its processor collates to a {kind}; only a tensor or a dict of tensors can "
        "be exported"
    )


def _flatten(batch: Any, keys: list[str] | None) -> tuple[torch.Tensor, ...]:
    return (batch,) if keys is None else tuple(batch[k] for k in keys)


def _arg_names(keys: list[str] | None) -> list[str]:
    """Python parameter (and ONNX input) names: the dict keys where they are identifiers."""
    if keys is None:
        return [BATCH_DIM]
    names = [k if k.isidentifier() and not keyword.iskeyword(k) and k != "self" else f"input_{i}"
             for i, k in enumerate(keys)]
    return names if len(set(names)) == len(names) else [f"input_{i}" for i in range(len(keys))]


class _Positional(nn.Module):
    """Calls an encoder with positional tensors; a dict batch is rebuilt from the recorded keys."""

    def __init__(self, encoder: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.keys = keys

    def call(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.keys is None:
            return self.encoder(inputs[0])
        return self.encoder(dict(zip(self.keys, inputs, strict=True)))


def _positional_module(encoder: nn.Module, keys: list[str] | None, names: list[str]) -> nn.Module:
    """A :class:`_Positional` whose ``forward`` has one named parameter per input.

    ``torch.export`` names the program's inputs after ``forward``'s parameters, and a loaded
    ``.pt2`` checks its input guards by those names (a ``*args`` forward loads but fails its
    guards in torch 2.9), so ``forward`` is generated with explicit parameters.
    """
    params = ", ".join(names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self.call(({params},))\n", namespace)
    cls = type("ExportedEncoder", (_Positional,), {"forward": namespace["forward"]})
    return cls(encoder, keys).eval()


def _varying_dims(processor: Any, sources: Sequence[Any], keys: list[str] | None) -> list[set[int]]:
    """Per input, the non-batch dimensions whose size differs between single-example batches."""
    shapes = [[tuple(t.shape) for t in _flatten(processor.load_batch([s]), keys)] for s in sources]
    varying: list[set[int]] = []
    for i, first in enumerate(shapes[0]):
        dims = set()
        for other in shapes[1:]:
            if len(other[i]) != len(first):
                raise ExportError(f"input {i} changes rank between examples: {first} vs {other[i]}")
            dims |= {d for d in range(1, len(first)) if other[i][d] != first[d]}
        varying.append(dims)
    return varying


def _dynamic_shapes(inputs: tuple[torch.Tensor, ...], varying: list[set[int]]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim(BATCH_DIM, min=1)
    return tuple({0: batch, **{d: torch.export.Dim.AUTO for d in dims}} for dims in varying)


def _program_shapes(program: torch.export.ExportedProgram, names: list[str]) -> list[list[int | str]]:
    """Each user input's shape in the exported program: ints where fixed, dimension names where dynamic."""
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    symbols: dict[str, str] = {}
    out: list[list[int | str]] = []
    user = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT]
    for arg_name, name in zip(user, names, strict=True):
        shape: list[int | str] = []
        for d, size in enumerate(placeholders[arg_name].meta["val"].shape):
            if isinstance(size, int):
                shape.append(size)
                continue
            symbol = str(size)
            if symbol not in symbols:
                symbols[symbol] = BATCH_DIM if d == 0 else f"{name}_dim{d}"
            shape.append(symbols[symbol])
        out.append(shape)
    return out


# ---------------------------------------------------------------------- exporting and checking
def _capture(module: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, Any], ...],
             modality: str) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            return torch.export.export(module, inputs, dynamic_shapes=dynamic)
    except Exception as err:  # the exporter raises many types; each is "cannot capture this encoder"
        raise ExportError(f"modality {modality!r}: torch.export cannot capture its encoder: "
                          f"{type(err).__name__}: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _save_torch_export(program: torch.export.ExportedProgram, path: Path, names: list[str],
                       modality: str) -> Callable[[tuple[torch.Tensor, ...]], np.ndarray]:
    torch.export.save(program, str(path))
    with warnings.catch_warnings():  # torch reads the weights from a read-only buffer and says so
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        loaded = torch.export.load(str(path)).module()

    def run(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        with torch.no_grad():
            return loaded(*inputs).detach().cpu().numpy()

    return run


def _save_onnx(program: torch.export.ExportedProgram, path: Path, names: list[str],
               modality: str) -> Callable[[tuple[torch.Tensor, ...]], np.ndarray]:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo ONNX exporter needs it; fail here with the hint)
    except ImportError as err:
        raise ExportError(f"--format onnx needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
                          f"{EXTRA_HINT}") from None
    try:
        with _quiet_onnx_exporter():
            onnx_program = torch.onnx.export(program, (), input_names=names, output_names=[OUTPUT_NAME],
                                             opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    except Exception as err:  # an op without an ONNX translation, mostly
        raise ExportError(f"modality {modality!r}: the ONNX exporter cannot translate its encoder: "
                          f"{type(err).__name__}: {_first_line(err)}") from err
    _name_dynamic_dims(onnx_program, names, _program_shapes(program, names))
    onnx_program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=True)}
        return session.run([OUTPUT_NAME], feed)[0]

    return run


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """The dynamo ONNX exporter logs progress and schema notes at WARNING; keep them out of the CLI."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._schemas")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _name_dynamic_dims(onnx_program: Any, names: list[str], shapes: list[list[int | str]]) -> None:
    """Give the ONNX graph's dynamic dimensions the names recorded in the JSON (``batch``, ...)."""
    try:
        import onnx_ir as ir
    except ImportError:  # cosmetic only
        return
    graph = onnx_program.model.graph
    renames: dict[str, str] = {}
    for value, shape in zip(graph.inputs, shapes, strict=True):
        for dim, wanted in zip(value.shape or (), shape, strict=False):
            if isinstance(wanted, str) and isinstance(dim, ir.SymbolicDim) and dim.value:
                renames.setdefault(dim.value, wanted)
    for value in [*graph.inputs, *graph.outputs]:
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(renames[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in renames else d
                for d in value.shape]
        value.shape = ir.Shape(dims)


SAVERS = {"onnx": _save_onnx, "torch-export": _save_torch_export}


def _verification_batches(processor: Any, sources: list[Any]) -> list[Any]:
    """The example batch, a one-sample batch and a batch one larger than the example."""
    return [processor.load_batch(sources), processor.load_batch(sources[-1:]),
            processor.load_batch([*sources, sources[0]])]


def export_encoder(
    model: Any,
    modality: str,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    atol: float = DEFAULT_ATOL,
    model_source: str | None = None,
) -> ExportResult:
    """Export the encoder of ``modality`` (the anchor for ``image``) and write its JSON description.

    Args:
        model: a :class:`~anchorbind.model.BindModel` (on CPU).
        modality: ``"image"`` or one of the model's plugins.
        fmt: ``"onnx"`` or ``"torch-export"``.
        out: the file to write (``.onnx`` / ``.pt2`` by convention); its description is written
            next to it with the suffix ``.json``.
        atol: the largest absolute difference from PyTorch tolerated on the verification batches.
        model_source: where the model came from, recorded in the JSON.

    Returns:
        the paths written and the description (with the verification's ``max_abs_diff``).

    Raises:
        ConfigError: unsupported format or an output path ending in ``.json``.
        UnknownModalityError: the model has no such modality.
        ExportError: the encoder cannot be exported in that format, or the exported program
            differs from PyTorch by more than ``atol``; nothing is written then.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unsupported export format {fmt!r}; choose one of {sorted(FORMATS)}")
    out = Path(out)
    if out.suffix == ".json":
        raise ConfigError(f"--out {str(out)!r}: the description is written next to the program as .json; "
                          f"name the program itself, e.g. {out.with_suffix(FORMATS[fmt]).name!r}")
    encoder = model.encoder(modality)
    processor = model.processor(modality)
    sources = example_sources(model, modality)
    batch = processor.load_batch(sources)
    keys = _input_names(batch, modality)
    names = _arg_names(keys)
    inputs = _flatten(batch, keys)
    dynamic = _dynamic_shapes(inputs, _varying_dims(processor, sources, keys))

    was_training = encoder.training
    encoder.eval()
    try:
        module = _positional_module(encoder, keys, names)
        program = _capture(module, inputs, dynamic, modality)
        shapes = _program_shapes(program, names)
        if any(shape[0] != BATCH_DIM for shape in shapes):
            raise ExportError(f"modality {modality!r}: torch.export fixed the batch size of its encoder's inputs "
                              f"{dict(zip(names, shapes, strict=True))}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            tmp = tmp_dir / out.name
            run = SAVERS[fmt](program, tmp, names, modality)
            worst, sizes = 0.0, []
            for check in _verification_batches(processor, sources):
                check_inputs = _flatten(check, keys)
                with torch.no_grad():
                    expected = module(*check_inputs).detach().cpu().numpy()
                try:
                    got = run(check_inputs)
                except Exception as err:
                    raise ExportError(f"modality {modality!r}: the exported {fmt} program fails on a batch of "
                                      f"{int(check_inputs[0].shape[0])} ({type(err).__name__}: {_first_line(err)})"
                                      ) from err
                if got.shape != expected.shape:
                    raise ExportError(f"modality {modality!r}: the exported {fmt} program returns {got.shape}, "
                                      f"PyTorch {expected.shape}")
                diff = float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
                worst, sizes = max(worst, diff), [*sizes, int(expected.shape[0])]
            if not worst <= atol:
                raise ExportError(f"modality {modality!r}: the exported {fmt} program differs from PyTorch by "
                                  f"{worst:.3g} (max abs) > {atol:g}")
            metadata = _metadata(model, modality, fmt, out, names, keys, inputs, shapes, processor,
                                 expected.shape[-1], worst, sizes, atol, model_source)
            meta_path = out.with_suffix(".json")
            (tmp_dir / meta_path.name).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
            os.replace(tmp, out)
            os.replace(tmp_dir / meta_path.name, meta_path)
        finally:
            for leftover in tmp_dir.glob("*"):
                leftover.unlink()
            tmp_dir.rmdir()
    finally:
        encoder.train(was_training)
    log.info("exported %s encoder to %s (max abs diff %.3g)", modality, out, worst)
    return ExportResult(out, meta_path, metadata)


def _metadata(model: Any, modality: str, fmt: str, out: Path, names: list[str], keys: list[str] | None,
              inputs: tuple[torch.Tensor, ...], shapes: list[list[int | str]], processor: Any, embed_dim: int,
              worst: float, sizes: list[int], atol: float, model_source: str | None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        anchorbind_version = version("anchorbind")
    except PackageNotFoundError:
        anchorbind_version = None
    encoder = model.encoder(modality)
    processor_config = config_to_dict(processor.config)
    processor_info: dict[str, Any] = {
        "class": f"{type(processor).__module__}.{type(processor).__qualname__}",
        "config": processor_config,
        "recreate": f"anchorbind.registry.create_processor({modality!r}, config)",
    }
    data_config = getattr(processor, "data_config", None)
    if data_config is not None:
        processor_info["data_config"] = dict(data_config)
    versions = {"anchorbind": anchorbind_version, "torch": torch.__version__}
    if fmt == "onnx":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "format": fmt,
        "export_format_version": EXPORT_FORMAT_VERSION,
        "file": out.name,
        "modality": modality,
        "model": model_source,
        "anchor_identity": model.anchor.identity,
        "encoder_class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "batch": "dict" if keys is not None else "tensor",
        "inputs": [
            {"name": name, "key": key, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape,
             "example_shape": list(t.shape)}
            for name, key, t, shape in zip(names, keys or [None], inputs, shapes, strict=True)
        ],
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, int(embed_dim)],
                   "unit_norm": True},
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "processor": processor_info,
        "verification": {"batch_sizes": sizes, "max_abs_diff": worst, "atol": atol},
        "versions": versions,
    }


# ---------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind export MODEL --modality M --format onnx|torch-export --out PATH``."""
    parser = argparse.ArgumentParser(
        prog="anchorbind export",
        description="Export one encoder (a plugin, or the frozen anchor for 'image') of a saved model, without "
                    "its processor, to ONNX or a torch.export .pt2; writes PATH's .json description beside it.",
    )
    parser.add_argument("model", help="a saved model folder (BindModel.save_pretrained)")
    parser.add_argument("--modality", required=True, help="'image' (the anchor) or one of the model's plugins")
    parser.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                        help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="the file to write, e.g. encoder.onnx or encoder.pt2")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"largest max-abs difference from PyTorch accepted (default {DEFAULT_ATOL:g})")
    args = parser.parse_args(argv)
    if args.fmt not in FORMATS:  # before loading the model: a typo costs nothing
        raise ConfigError(f"unsupported export format {args.fmt!r}; choose one of {sorted(FORMATS)}")

    from anchorbind.model import BindModel

    model = BindModel.from_pretrained(args.model).eval()
    model.encoder(args.modality)  # an unknown modality fails before anything is traced
    result = export_encoder(model, args.modality, args.fmt, args.out, atol=args.atol, model_source=str(args.model))
    print(f"wrote {result.path} and {result.metadata_path} ({args.modality}, {args.fmt}; max abs diff "
          f"{result.max_abs_diff:.2g} from PyTorch over batches of {result.metadata['verification']['batch_sizes']})")
    return 0
