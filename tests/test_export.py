"""``anchorbind export``: every built-in encoder and the anchor, in both formats, reproduce PyTorch.

Each exported file is loaded back independently of :mod:`anchorbind.export` (onnxruntime, or
``torch.export.load``) and compared with ``BindModel.encode`` on the example batch and on
batches of other sizes (and, for text, another token count); mistakes are one-line errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorbind import BindModel
from anchorbind.errors import ConfigError, UnknownModalityError
from anchorbind.export import ExportError, example_sources, export_encoder
from tests.conftest import subprocess_env

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TINY = {"width": 32, "depth": 1, "num_heads": 2}
CONFIG = {
    "anchor": {"image_size": 64},  # the packaged EfficientNet-Lite0, at a small resolution
    "modalities": {"text": {}, "audio": dict(TINY), "depth": {"image_size": 32, **TINY}},
}
TOL = 1e-5
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


@pytest.fixture(scope="module")
def model() -> BindModel:
    torch.manual_seed(0)
    return BindModel.from_config(CONFIG).eval()


def _batches(model: BindModel, modality: str) -> list:
    """The example batch, a batch of another size, and (text) one of another token count."""
    sources = example_sources(model, modality)
    processor = model.processor(modality)
    batches = [processor.load_batch(sources), processor.load_batch([sources[1], sources[0]] * 3)]
    if modality == "text":
        batches.append(processor.load_batch(["a much longer caption than any of the examples, about a small red "
                                             "cube that sits on a wooden table next to a barking dog", "hi"]))
    return batches


def _runner(path: Path, fmt: str, names: list[str]):
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == names
        return lambda inputs: session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
    program = torch.export.load(str(path)).module()
    return lambda inputs: program(*inputs).detach().numpy()


@pytest.mark.parametrize("fmt", ["torch-export", "onnx"])
@pytest.mark.parametrize("modality", [
    "depth", "audio",
    pytest.param("text", marks=pytest.mark.slow),
    pytest.param("image", marks=pytest.mark.slow),
])
def test_exported_encoder_matches_pytorch(model, tmp_path, modality, fmt):
    out = tmp_path / f"{modality}{SUFFIX[fmt]}"
    result = export_encoder(model, modality, fmt, out)
    assert result.path == out and out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, f"{modality}.json"])  # no leftovers
    assert meta["modality"] == modality and meta["format"] == fmt
    assert meta["output"]["shape"] == ["batch", model.embed_dim]
    assert all(spec["shape"][0] == "batch" for spec in meta["inputs"])
    assert meta["verification"]["max_abs_diff"] <= TOL

    names = [spec["name"] for spec in meta["inputs"]]
    keys = [spec["key"] for spec in meta["inputs"]]
    run = _runner(out, fmt, names)
    sizes = set()
    for batch in _batches(model, modality):
        inputs = (batch,) if meta["batch"] == "tensor" else tuple(batch[k] for k in keys)
        with torch.no_grad():
            expected = model.encode(modality, batch).numpy()
        got = run(inputs)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOL
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        sizes.add(got.shape[0])
    assert len(sizes) > 1

    # the processor config recorded in the JSON reproduces the preprocessing
    from anchorbind.registry import create_processor

    again = create_processor(modality, meta["processor"]["config"])
    batch = again.load_batch(example_sources(model, modality))
    first = (batch,) if meta["batch"] == "tensor" else tuple(batch[k] for k in keys)
    for tensor, spec in zip(first, meta["inputs"], strict=True):
        assert list(tensor.shape) == spec["example_shape"] and str(tensor.dtype) == f"torch.{spec['dtype']}"


def test_token_inputs_have_a_dynamic_sequence_length(model, tmp_path):
    result = export_encoder(model, "text", "torch-export", tmp_path / "text.pt2")
    shapes = {spec["name"]: spec["shape"] for spec in result.metadata["inputs"]}
    assert shapes["input_ids"][0] == "batch" and isinstance(shapes["input_ids"][1], str)
    assert shapes["attention_mask"] == shapes["input_ids"]


def test_fixed_size_inputs_keep_their_sizes(model, tmp_path):
    result = export_encoder(model, "depth", "torch-export", tmp_path / "depth.pt2")
    assert result.metadata["inputs"] == [
        {"name": "batch", "key": None, "dtype": "float32", "shape": ["batch", 1, 32, 32],
         "example_shape": [3, 1, 32, 32]}
    ]


def test_api_mistakes(model, tmp_path):
    with pytest.raises(ConfigError, match="unsupported export format 'tflite'"):
        export_encoder(model, "depth", "tflite", tmp_path / "x.tflite")
    with pytest.raises(UnknownModalityError, match="smell"):
        export_encoder(model, "smell", "onnx", tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match=r"\.json"):
        export_encoder(model, "depth", "onnx", tmp_path / "x.json")
    assert not list(tmp_path.iterdir())


def test_an_encoder_torch_export_cannot_capture_is_a_clear_error(tmp_path):
    """Data-dependent Python control flow is refused with the reason, never frozen into the program."""
    torch.manual_seed(0)
    small = BindModel.from_config({"anchor": {"weights": "none", "model": "resnet10t", "image_size": 32},
                                   "modalities": {"depth": {"image_size": 32, **TINY}}}).eval()
    plugin = small.plugin("depth")
    original = plugin.forward

    def branchy(batch):
        out = original(batch)
        return out if float(batch.mean()) > 0 else -out  # a branch on the data's value

    plugin.forward = branchy
    for fmt in ("onnx", "torch-export"):
        with pytest.raises(ExportError, match=r"modality 'depth': torch\.export cannot capture its encoder"):
            export_encoder(small, "depth", fmt, tmp_path / f"depth{SUFFIX[fmt]}")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- the command line
def anchorbind(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("anchorbind")
    assert exe, "the anchorbind console script is not installed"
    return subprocess.run([exe, *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export_model") / "model"
    BindModel.from_config({"anchor": {"weights": "none", "model": "resnet10t", "image_size": 32},
                           "modalities": {"depth": {"image_size": 32, **TINY}}}).save_pretrained(out)
    return out


def _one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_exports_and_describes(saved, tmp_path):
    done = anchorbind("export", str(saved), "--modality", "depth", "--format", "torch-export",
                      "--out", str(tmp_path / "depth.pt2"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    meta = json.loads((tmp_path / "depth.json").read_text())
    assert meta["model"] == str(saved) and meta["processor"]["config"]["image_size"] == 32


@pytest.mark.parametrize(("args", "code", "needles"), [
    (["--modality", "smell", "--format", "onnx"], 2, ["smell"]),
    (["--modality", "depth", "--format", "tflite"], 2, ["'tflite'", "onnx"]),
    (["MISSING", "--modality", "depth", "--format", "onnx"], 1, ["nope"]),
])
def test_cli_mistakes_are_one_line(saved, tmp_path, args, code, needles):
    model = [str(tmp_path / "nope")] if args[0] == "MISSING" else [str(saved)]
    args = [a for a in args if a != "MISSING"]
    _one_line(anchorbind("export", *model, *args, "--out", str(tmp_path / "x.onnx"), cwd=tmp_path), code, *needles)
    assert not (tmp_path / "x.onnx").exists()
