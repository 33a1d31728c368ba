"""The plugin contract kit (``anchorbind.contract``, ``anchorbind check-plugin``) passes good plugins and names
what a broken one breaks.

The built-in plugins are checked through the command line, as a plugin author would run it. The
broken plugins are toys written to a temporary directory together with a hand-written
``*.dist-info`` declaring their entry points (what ``pip install`` would leave there), so a child
interpreter whose ``PYTHONPATH`` holds that directory discovers them exactly like an installed
package, with no conftest and no edit to this repository. A few cases run in this process with the
toy classes put into the registry for the duration of one test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from anchorbind import registry
from anchorbind.contract import CHECKS, assert_plugin_contract, check_plugin, format_results
from tests.conftest import subprocess_env

CHECK_NAMES = [name for name, _, _ in CHECKS]

TOY_MODULE = '''
"""Toy plugins for the contract kit's tests: ``toy`` passes every check, the others each break a rule."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anchorbind.errors import InputError
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.processor import Processor


@dataclass
class ToyConfig(PluginConfig):
    width: int = 8
    frozen_trunk: bool = False


class ToyProcessor(Processor):
    """Four finite floats (a list or an array)."""

    def load(self, source, *, train=False):
        if isinstance(source, (str, bytes)) or not hasattr(source, "__len__"):
            raise InputError(source, "expected a sequence of 4 floats", self.modality)
        values = np.asarray(source, dtype=np.float32)
        if values.shape != (4,) or not np.isfinite(values).all():
            raise InputError(source, f"expected 4 finite floats, got shape {values.shape}", self.modality)
        sample = torch.from_numpy(values)
        return sample + 0.01 * torch.randn(4) if train else sample

    def collate(self, samples):
        return torch.stack(list(samples))


class ToyPlugin(ModalityPlugin):
    """Four floats through a one-layer trunk."""

    name = "toy"
    Config = ToyConfig
    Processor = ToyProcessor
    sample_keys = ("toy.npy",)

    @classmethod
    def example_inputs(cls):
        return [[1.0, 0.0, 0.5, -1.0], [0.0, 2.0, -0.5, 1.0], np.array([3.0, 1.0, 0.0, 0.0])]

    @classmethod
    def example_bad_inputs(cls):
        return [b"", object(), [1.0, 2.0], [float("nan")] * 4]

    def build_trunk(self):
        if not self.config.frozen_trunk:
            return nn.Sequential(nn.Linear(4, self.config.width), nn.GELU()), self.config.width
        with torch.random.fork_rng():  # a frozen trunk is not saved: it must be rebuilt identically
            torch.manual_seed(0)
            trunk = nn.Sequential(nn.Linear(4, self.config.width), nn.GELU())
        return trunk.requires_grad_(False), self.config.width

    def forward_features(self, batch):
        return self.trunk(batch)


class RandomFrozenPlugin(ToyPlugin):
    """A frozen trunk with a random initialisation that claims its config restores it: BindModel
    then does not save it, so it cannot reload."""

    name = "randomfrozen"

    def build_trunk(self):
        return nn.Sequential(nn.Linear(4, self.config.width), nn.GELU()).requires_grad_(False), self.config.width

    def trunk_rebuilt_from_config(self) -> bool:
        return True  # wrong: nothing in the config restores a random initialisation


class SavedFrozenPlugin(RandomFrozenPlugin):
    """The same frozen random trunk, honestly declared: BindModel saves it, so it reloads."""

    name = "savedfrozen"

    def trunk_rebuilt_from_config(self) -> bool:
        return False


class UnnormedPlugin(ToyPlugin):
    """Forgets to normalise its embeddings."""

    name = "unnormed"

    def forward(self, batch):
        return self.head(self.forward_features(batch))


class LaxProcessor(ToyProcessor):
    """Checks nothing: bad inputs crash with numpy's errors or are accepted."""

    def load(self, source, *, train=False):
        return torch.as_tensor(np.asarray(source, dtype=np.float32))


class LaxPlugin(ToyPlugin):
    name = "lax"
    Processor = LaxProcessor


class DetachedPlugin(ToyPlugin):
    """Its trunk output is detached: the trunk would never learn."""

    name = "detached"

    def forward_features(self, batch):
        return self.trunk(batch).detach()


class NoExamplesPlugin(ToyPlugin):
    name = "noexamples"

    @classmethod
    def example_inputs(cls):
        return []


class NotScalarPlugin(ToyPlugin):
    """A native loss that is a vector, not a scalar."""

    name = "notscalar"

    def native_loss(self, batch):
        return self.forward_features(batch).sum(-1)


class NoisyPlugin(ToyPlugin):
    """Embeddings that are not deterministic in eval mode."""

    name = "noisy"

    def forward(self, batch):
        return super().forward(batch + 1e-3 * torch.randn_like(batch))
'''

DECORATED_MODULE = '''
from anchorbind.registry import register_modality
from contract_toy import ToyPlugin


@register_modality
class DecoratedPlugin(ToyPlugin):
    name = "decorated"
'''

ENTRY_POINTS = {
    "toy": "contract_toy:ToyPlugin",
    "unnormed": "contract_toy:UnnormedPlugin",
    "lax": "contract_toy:LaxPlugin",
    "ghost": "contract_toy:NoSuchPlugin",
}


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that looks like an installed ``contract-toy`` distribution with entry points."""
    site = tmp_path_factory.mktemp("contract-toy") / "site"
    site.mkdir()
    (site / "contract_toy.py").write_text(TOY_MODULE)
    (site / "contract_toy_decorated.py").write_text(DECORATED_MODULE)
    dist_info = site / "contract_toy-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: contract-toy\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in ENTRY_POINTS.items())
    (dist_info / "entry_points.txt").write_text(f"[anchorbind.modalities]\n{lines}\n")
    return site


@pytest.fixture
def toy(toy_site: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The toy module imported in this process (picklable by name); registry entries added via ``register``."""
    spec = importlib.util.spec_from_file_location("contract_toy", toy_site / "contract_toy.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "contract_toy", module)
    spec.loader.exec_module(module)
    registry.list_modalities()  # read the real entry points first, so none is loaded during the test

    def register(cls: type) -> str:
        monkeypatch.setitem(registry._REGISTRY, cls.name, cls)
        return cls.name

    module.register = register
    return module


def check_plugin_command(*args: str, site: Path | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(*([site] if site else []), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "anchorbind", "check-plugin", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def check_lines(stdout: str) -> dict[str, str]:
    """``{check name: "PASS"|"FAIL"}`` from the command's output."""
    found = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in {"PASS", "FAIL"}:
            found[rest.split()[0]] = status
    return found


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("name", ["text", "audio", "depth", "thermal", "imu"])
def test_check_plugin_passes_for_the_builtin_plugins(name, tmp_path):
    done = check_plugin_command(name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert check_lines(done.stdout) == dict.fromkeys(CHECK_NAMES, "PASS"), done.stdout
    assert done.stdout.splitlines()[-1].startswith(f"{name}: all {len(CHECK_NAMES)} checks passed"), done.stdout


def test_check_plugin_json_output_and_inline_config(toy_site, tmp_path):
    done = check_plugin_command("toy", "--json", "--config", '{"width": 4, "frozen_trunk": true}',
                                site=toy_site, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["plugin"] == "toy" and report["passed"] is True
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    gradients = next(c for c in report["checks"] if c["name"] == "gradients")
    assert "trunk frozen by config" in gradients["detail"], gradients


def test_check_plugin_reads_a_config_file_and_refuses_a_bad_one(toy_site, tmp_path):
    good = tmp_path / "toy.yaml"
    good.write_text("width: 6\n")
    assert check_plugin_command("toy", "--config", str(good), site=toy_site, cwd=tmp_path).returncode == 0
    done = check_plugin_command("toy", "--config", '{"widht": 6}', site=toy_site, cwd=tmp_path)
    assert done.returncode == 2 and "widht" in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = check_plugin_command("toy", "--config", "{not json", site=toy_site, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("name", "failing", "needle"), [
    ("unnormed", "embeddings", "not unit L2 norm"),
    ("lax", "bad_inputs", "expected InputError"),
])
def test_check_plugin_fails_a_broken_plugin_and_names_the_check(toy_site, tmp_path, name, failing, needle):
    done = check_plugin_command(name, site=toy_site, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    statuses = check_lines(done.stdout)
    assert statuses[failing] == "FAIL", done.stdout
    assert statuses["registration"] == "PASS" and statuses["config"] == "PASS", done.stdout
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"FAIL {failing} ")]
    assert needle in line, line
    assert f"FAILED: {failing}" in done.stdout.splitlines()[-1], done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_check_plugin_entry_point_that_does_not_load_fails_registration(toy_site, tmp_path):
    done = check_plugin_command("ghost", site=toy_site, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert check_lines(done.stdout)["registration"] == "FAIL"
    assert "NoSuchPlugin" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_check_plugin_unknown_name_is_a_one_line_error_with_exit_2(tmp_path):
    done = check_plugin_command("no_such_modality", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "no_such_modality" in errors[0] and "Traceback" not in done.stderr, done.stderr
    assert not check_lines(done.stdout)


def test_check_plugin_imports_a_decorator_registered_plugin(toy_site, tmp_path):
    done = check_plugin_command("decorated", site=toy_site, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr  # not imported: unknown
    done = check_plugin_command("decorated", "--import", "contract_toy_decorated", site=toy_site, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS registration" in done.stdout and "@register_modality" in done.stdout, done.stdout


# ---------------------------------------------------------------- the library, in this process
def test_assert_plugin_contract_passes_and_returns_results(toy):
    name = toy.register(toy.ToyPlugin)
    results = assert_plugin_contract(name)
    assert [r.name for r in results] == CHECK_NAMES and all(r.passed for r in results)
    by_name = {r.name: r for r in results}
    assert "pickle" in by_name["processor"].detail
    assert "non-zero gradients" in by_name["gradients"].detail
    assert "None" in by_name["native_loss"].detail


def test_assert_plugin_contract_lists_the_failed_checks(toy):
    name = toy.register(toy.UnnormedPlugin)
    with pytest.raises(AssertionError, match=r"(?s)fails 1 contract check.*embeddings: embeddings are not unit"):
        assert_plugin_contract(name)


def test_missing_example_inputs_fail_with_a_message_and_block_what_needs_them(toy):
    results = {r.name: r for r in check_plugin(toy.register(toy.NoExamplesPlugin))}
    assert not results["example_inputs"].passed
    assert "implement the classmethod example_inputs()" in results["example_inputs"].detail
    for name in ("embeddings", "gradients", "save_load", "bind_model", "native_loss"):
        assert not results[name].passed and results[name].detail.startswith("not run"), results[name]
    assert results["processor"].passed and results["bad_inputs"].passed


def test_a_detached_trunk_fails_the_gradient_check(toy):
    results = {r.name: r for r in check_plugin(toy.register(toy.DetachedPlugin))}
    assert not results["gradients"].passed and "no gradient reaches the trunk" in results["gradients"].detail
    assert all(r.passed for n, r in results.items() if n != "gradients"), format_results("detached", results.values())


def test_non_deterministic_embeddings_fail(toy):
    results = {r.name: r for r in check_plugin(toy.register(toy.NoisyPlugin))}
    assert not results["embeddings"].passed and "not deterministic" in results["embeddings"].detail
    assert not results["save_load"].passed and results["gradients"].passed and results["native_loss"].passed


def test_a_native_loss_that_is_not_a_scalar_fails(toy):
    name = toy.register(toy.NotScalarPlugin)
    results = {r.name: r for r in check_plugin(name)}
    assert not results["native_loss"].passed and "must be a scalar" in results["native_loss"].detail
    assert results["gradients"].passed  # native_loss_weight is 0: training never calls it
    results = {r.name: r for r in check_plugin(name, {"native_loss_weight": 0.5})}
    assert not results["gradients"].passed and not results["native_loss"].passed


def test_a_frozen_trunk_that_is_not_rebuilt_identically_fails_the_bind_model_round_trip(toy):
    results = {r.name: r for r in check_plugin(toy.register(toy.RandomFrozenPlugin))}
    assert results["gradients"].passed and "trunk frozen by config" in results["gradients"].detail
    assert results["save_load"].passed  # the plugin's own state dict holds the trunk
    assert not results["bind_model"].passed and "plugins.randomfrozen.trunk.0" in results["bind_model"].detail
    saved = {r.name: r for r in check_plugin(toy.register(toy.SavedFrozenPlugin))}
    assert saved["bind_model"].passed, saved["bind_model"].detail  # not declared rebuilt: stored, so it reloads


def test_a_crashing_check_is_a_failure_not_a_crash(toy, monkeypatch):
    name = toy.register(toy.ToyPlugin)

    def boom(cls):
        raise RuntimeError("example files missing\nsecond line")

    monkeypatch.setattr(toy.ToyPlugin, "example_inputs", classmethod(boom))
    results = {r.name: r for r in check_plugin(name)}
    assert results["example_inputs"].detail == "RuntimeError: example files missing second line"
    assert results["registration"].passed and results["bad_inputs"].passed


def test_unknown_name_fails_registration_without_raising():
    results = check_plugin("no_such_modality")
    assert not results[0].passed and "no_such_modality" in results[0].detail
    assert all(r.detail.startswith("not run") for r in results[1:])
