"""Training configs and ``--set`` overrides: every mistake is one ``ConfigError`` line naming the
dotted key and what is allowed, raised before any model is built (``anchorbind train`` exit 2).

Most cases run in-process through :func:`load_train_config` (what ``anchorbind train`` calls
first); a representative few run the real console script (each child costs seconds of imports).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from anchorbind.config import load_yaml, resolve_config
from anchorbind.data.shardlist import count_samples
from anchorbind.errors import ConfigError
from anchorbind.train.config import load_train_config
from tests.test_cli_errors import anchorbind, assert_one_line_error, run_in_process


def write_shard(path: Path, samples: int, exts: tuple[str, ...] = ("txt", "json")) -> Path:
    """A real tar with ``samples`` samples (one member per extension each); content is irrelevant here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for i in range(samples):
            for ext in exts:
                info = tarfile.TarInfo(f"{path.stem}-{i:06d}.{ext}")
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))
    return path


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    """A split of 2 shards x 3 samples, without a manifest."""
    for i in range(2):
        write_shard(tmp_path / "shards" / f"s-{i:06d}.tar", 3)
    return tmp_path / "shards"


def load(*overrides: str, shards: Path | None = None) -> object:
    """The packaged demo config with its shards replaced by ``shards`` (none: left as the demo's)."""
    base = [f"data.train_shards={shards}", "data.eval_shards=null", "data.batch_size=2"] if shards else []
    return load_train_config("demo", [*base, *overrides])


def one_line(err: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------------- keys and types
def test_an_unknown_nested_key_names_its_dotted_path_and_lists_that_sections_keys(shards):
    with pytest.raises(ConfigError) as err:
        load("optim.lerning_rate=1", shards=shards)
    text = one_line(err)
    assert "'optim.lerning_rate'" in text
    assert "known keys of 'optim': betas, eps, grad_accum_steps, grad_clip_norm, lr" in text
    assert "checkpoint_every" not in text  # not the top level's keys
    with pytest.raises(ConfigError, match=r"'model\.anchor\.wieghts'.*known keys of 'model\.anchor': image_size, "
                                          r"max_pixels, memory_format, model, model_kwargs, output, weights"):
        load("model.anchor.wieghts=none", shards=shards)
    with pytest.raises(ConfigError, match=r"'data\.batch_sise' \(did you mean 'batch_size'\?\); known keys of 'data'"):
        load("data.batch_sise=1", shards=shards)
    with pytest.raises(ConfigError, match=r"unknown config keys 'data\.a', 'data\.b'; known keys of 'data'"):
        load("data.a=1", "data.b=2", shards=shards)


@pytest.mark.parametrize(("override", "expected"), [
    ("optim.lr=abc", "key 'optim.lr' expects a number, got 'abc'"),
    ("steps=abc", "key 'steps' expects an integer, got 'abc'"),
    ("steps=true", "key 'steps' expects an integer, got True"),  # bool subclasses int: dacite lets it through
    ("data.batch_size=2.5", "key 'data.batch_size' expects an integer, got 2.5"),
    ("compile=maybe", "key 'compile' expects true or false, got 'maybe'"),
    ("data=3", "key 'data' expects a mapping (the DataConfig section), got 3"),
    ("optim.betas=[0.9]", "key 'optim.betas' expects a list of 2 values (a number, a number)"),
    ("optim.grad_clip_norm=[1]", "key 'optim.grad_clip_norm' expects a number or null, got [1]"),
    ("loss.weights.text=heavy", "key 'loss.weights' expects a mapping of string keys to a number"),
])
def test_a_wrong_type_names_the_dotted_key_and_the_type_in_words(shards, override, expected):
    with pytest.raises(ConfigError) as err:
        load(override, shards=shards)
    assert expected in one_line(err)
    assert "<class" not in str(err.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("steps", "override 'steps': expected key=value, e.g. --set optim.lr=3e-4"),
    ("=3", "override '=3': empty key"),
    ("steps=[1", "override 'steps=[1': value is not valid YAML (expected ',' or ']', but got '<stream end>' at line 1"),
    ("optim.lr.x=1", "override 'optim.lr.x=1': 'optim.lr' is a value, not a section"),
])
def test_bad_override_syntax_is_one_line(override, expected):
    with pytest.raises(ConfigError) as err:
        load_train_config("demo", [override])
    assert expected in one_line(err)


def test_a_folder_named_like_a_packaged_config_does_not_shadow_it(tmp_path, monkeypatch):
    """`anchorbind demo --out demo` makes ./demo; the next `--config demo` must still be the packaged one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert resolve_config("demo").parent.name == "configs"
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        resolve_config("mine")


def test_missing_or_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere\.yaml': no such file, and not a packaged config"):
        load_yaml(tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        load_yaml(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not UTF-8"):
        load_yaml(binary)
    listed = tmp_path / "list.yaml"
    listed.write_text("- steps\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML \(.* at line \d+, column \d+\)") as err:
        load_yaml(broken)
    one_line(err)


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize(("override", "expected"), [
    ("optim.lr=-1", "optim.lr must be a number > 0, got -1.0"),
    ("optim.lr=0", "optim.lr must be a number > 0, got 0.0"),
    ("optim.lr=.nan", "optim.lr must be a number > 0, got nan"),
    ("optim.eps=0", "optim.eps must be a number > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be a number >= 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas must be two numbers in [0, 1)"),
    ("optim.grad_clip_norm=0", "optim.grad_clip_norm must be a number > 0, or null for no clipping"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be an integer >= 0, got -1"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
    ("data.shuffle_buffer=-5", "data.shuffle_buffer must be an integer >= 0, got -5"),
    ("seed=-1", "seed must be an integer in [0, 2**32)"),
    ("loss.weights.text=-1", "loss.weights.text must be a number >= 0"),
])
def test_values_no_run_can_use_are_refused_with_the_allowed_range(shards, override, expected):
    with pytest.raises(ConfigError) as err:
        load(override, shards=shards)
    assert expected in one_line(err)


def test_several_bad_values_are_reported_together(shards):
    with pytest.raises(ConfigError) as err:
        load("optim.lr=-1", "data.num_workers=-1", "optim.warmup_steps=-2", shards=shards)
    text = one_line(err)
    assert all(key in text for key in ("optim.lr", "data.num_workers", "optim.warmup_steps"))


def test_zero_workers_buffer_and_warmup_and_no_clipping_are_valid(shards):
    cfg = load("data.num_workers=0", "data.shuffle_buffer=0", "optim.warmup_steps=0", "optim.grad_clip_norm=null",
               shards=shards)
    assert cfg.data.num_workers == 0 and cfg.optim.grad_clip_norm is None


# ---------------------------------------------------------------------- shards and output
def test_shard_specs_that_match_no_file_are_refused_before_the_model_is_built(tmp_path, shards, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty.tar").write_bytes(b"")
    cases = {
        "data.train_shards=runs/none": ("data.train_shards 'runs/none': no such file or directory "
                                        f"(relative to {tmp_path})"),
        "data.train_shards=/nowhere/x-{000..003}.tar": "4 of 4 shards not found, first: /nowhere/x-000.tar",
        "data.train_shards=empty_dir": "shard directory empty_dir contains no .tar files",
        "data.train_shards=shards/*.tgz": "shard pattern shards/*.tgz matches no file",
        "data.train_shards=empty.tar": "data.train_shards 'empty.tar': 1 shard(s) are empty files",
        "data.eval_shards=nowhere": "data.eval_shards 'nowhere': no such file or directory",
    }
    for override, expected in cases.items():
        overrides = [f"data.train_shards={shards}", "data.batch_size=2", override]
        with pytest.raises(ConfigError) as err:
            load_train_config("demo", overrides)
        text = one_line(err)
        assert expected in text and "brace notation or a URL" in text, text
    # URLs are not checked here: a failure to open one is the loader's to report
    for url in ("pipe:aws s3 cp s3://bucket/test-000000.tar -", "https://example.org/test-{000..009}.tar"):
        assert load(f"data.eval_shards={url}", shards=shards).data.eval_shards == url


def test_a_batch_larger_than_the_training_shards_is_refused(tmp_path, shards):
    assert load("data.batch_size=6", shards=shards).data.batch_size == 6  # exactly the 6 samples
    with pytest.raises(ConfigError) as err:
        load("data.batch_size=7", shards=shards)
    assert f"data.batch_size must be <= the 6 samples in data.train_shards '{shards}'" in one_line(err)
    assert "got 7" in str(err.value)
    # a split's manifest.json gives the count without listing the tars (it is what the writers record)
    (shards / "manifest.json").write_text(json.dumps({"shards": [{"name": "s-000000.tar", "samples": 2},
                                                                 {"name": "s-000001.tar", "samples": 2}]}))
    with pytest.raises(ConfigError, match="the 4 samples"):
        load("data.batch_size=5", shards=shards)


def test_count_samples_reads_manifests_or_tar_headers_and_stops_early(tmp_path):
    big = write_shard(tmp_path / "big" / "b-000000.tar", 50, exts=("png", "depth.npy", "txt"))
    assert count_samples([str(big)]) == 50
    assert count_samples([str(big)], at_least=8) == 8
    assert count_samples(["pipe:cat x.tar"]) is None
    assert count_samples([str(tmp_path / "missing.tar")]) is None
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    assert count_samples([str(tmp_path / "junk.tar")]) is None


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, shards):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError) as err:
        load(f"output_dir={afile}", shards=shards)
    assert f"output_dir '{afile}' is a file, not a directory" in one_line(err)
    with pytest.raises(ConfigError) as err:
        load(f"output_dir={afile}/run", shards=shards)
    assert f"output_dir '{afile}/run' is under '{afile}', which is a file" in one_line(err)
    assert load(f"output_dir={tmp_path}/new/run", shards=shards).output_dir == f"{tmp_path}/new/run"


# ---------------------------------------------------------------------- through the console script
def test_train_config_mistakes_through_the_cli_exit_2_with_the_key_named(tmp_path, shards, capsys, monkeypatch):
    valid = ["--config", "demo", "--set", f"data.train_shards={shards}", "--set", "data.eval_shards=null"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["--set", "optim.lerning_rate=1"], ["'optim.lerning_rate'", "known keys of 'optim'", "lr"]),
        (["--set", "steps=abc"], ["'steps'", "expects an integer", "'abc'"]),
        (["--set", "optim.lr=-1", "--set", "data.num_workers=-1"], ["optim.lr must be a number > 0",
                                                                    "data.num_workers must be an integer >= 0"]),
        (["--set", "data.train_shards=runs/none"], ["data.train_shards", "runs/none", "no such file"]),
        (["--set", "data.batch_size=64"], ["data.batch_size must be <= the 6 samples"]),
        (["--set", "data.batch_size=2", "--output-dir", str(afile)], ["output_dir", "is a file"]),
    ]
    # the first through the console script, the rest through the main() it calls, in this interpreter
    (first_args, first_needles), *rest = cases
    assert_one_line_error(anchorbind("train", *valid, *first_args, cwd=tmp_path), 2, *first_needles)
    monkeypatch.chdir(tmp_path)
    for args, needles in rest:
        assert_one_line_error(run_in_process(capsys, "train", *valid, *args), 2, *needles)
