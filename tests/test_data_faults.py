"""Bad input and faults in conversion, the anchor cache and the world writer: a reported skip or
one clear line, never a traceback, nothing dropped, renamed or mixed silently, and nothing a
killed run leaves behind read as a shard (issue 13, "Data conversion and cache" in docs/reliability.md)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from anchorbind import cli
from anchorbind.anchor import FrozenAnchor
from anchorbind.data.cache import build_anchor_cache
from anchorbind.data.shardlist import expand_shards, iter_shard
from anchorbind.data.tempfiles import is_temporary
from anchorbind.pipelines.shards.convert import convert_to_shards
from anchorbind.pipelines.shards.world import write_world_shards
from anchorbind.pipelines.shards.writer import PlanMismatchError
from anchorbind.pipelines.world import WorldConfig
from tests.conftest import REPO, subprocess_env
from tests.data_utils import ANCHOR_CONFIG, processors
from tests.data_utils import anchor as data_anchor

TINY_WORLD = WorldConfig(image_size=32, supersample=1)


def png_bytes(seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_tar(path, members: list[tuple[str, bytes | None]]) -> None:
    """A tar with exactly these members (``None``: a directory)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def tar_members(path) -> list[tuple[str, bytes | None]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read() if m.isreg() else None) for m in tar]


def skipped(out) -> list[dict]:
    return json.loads((out / "report.json").read_text())["skipped"]


# ------------------------------------------------------------------------------ 1. manifest rows
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_caption_longer_than_a_file_name_is_converted(tmp_path, capsys, suffix):
    caption = "a caption that is longer than any file name can be " * 6  # 312 bytes: is_file() raised
    manifest = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        manifest.write_text(f"text\n{caption}\nshort caption\n")
    else:
        manifest.write_text(f'{json.dumps({"text": caption})}\n{json.dumps({"text": "short caption"})}\n')
    assert cli.main(["shards", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    texts = [s["txt"].decode() for s in iter_shard(tmp_path / "out" / "data-000000.tar")]
    assert texts == [caption, "short caption"] and (tmp_path / "out" / "report.json").exists()


def test_long_captions_are_text_and_every_bad_row_is_reported_with_its_line(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s1.txt").write_text("caption from a file")
    (tmp_path / "data" / "notes.md").write_text("caption from a text_file of any extension")
    (tmp_path / "data" / "my notes.txt").write_text("a .txt path with a space that exists")
    long_ascii = "a long caption " * 30                      # > 255 bytes: used to crash is_file()
    long_utf8 = "ça va très bien merci " * 20                # > 255 bytes in UTF-8
    lines = [
        "key,text,text_file,label",
        f"r1,{long_ascii},,x",                                # line 2
        f"r2,{long_utf8},,y",                                 # line 3
        "r3,data/s1.txt,,",                                   # line 4: a path (ends in .txt, no space)
        "r4,,data/notes.md,",                                 # line 5: text_file is always a path
        "r5,data/my notes.txt,,",                             # line 6: ends in .txt, spaces, exists: a path
        "r6,see notes.txt for more,,",                        # line 7: ends in .txt, spaces, missing: text
        "a/b,a key with a slash,,",                           # line 8: refused
        "r8,too,many,cells,here",                             # line 9: more cells than columns
        "r9," + "x" * 200_000 + ",,",                         # line 10: over the csv field limit
        "r10,both,data/notes.md,",                            # line 11: text and text_file
        "r1,a duplicate key,,",                               # line 12
        "r.12,a key with a dot,,",                            # line 13: dot -> _, original kept
    ]
    manifest = tmp_path / "rows.csv"
    manifest.write_bytes(("\n".join(lines) + "\n").encode() + b"r13,caf\xe9 in latin-1,,\n")  # line 14: not UTF-8
    code = cli.main(["shards", str(manifest), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    samples = {s["__key__"]: s for s in iter_shard(tmp_path / "out" / "data-000000.tar")}
    assert samples["r1"]["txt"].decode() == long_ascii
    assert samples["r2"]["txt"].decode() == long_utf8
    assert samples["r3"]["txt"] == b"caption from a file"
    assert samples["r4"]["txt"] == b"caption from a text_file of any extension"
    assert samples["r5"]["txt"] == b"a .txt path with a space that exists"
    assert samples["r6"]["txt"] == b"see notes.txt for more"
    assert json.loads(samples["r_12"]["json"])["key"] == "r.12", "a renamed key keeps its original"
    assert sorted(samples) == ["r1", "r2", "r3", "r4", "r5", "r6", "r_12"]
    rows = {r["row"]: r["reason"] for r in skipped(tmp_path / "out") if "row" in r}
    assert "path separator" in rows[8]
    assert "5 cells" in rows[9]
    assert "field larger than field limit" in rows[10]
    assert "both 'text' and 'text_file'" in rows[11]
    assert "duplicate key 'r1'" in rows[12] and "line 2" in rows[12]
    assert rows[14] == "not UTF-8"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["samples_skipped"] == 6 and report["samples_written"] == 7


def test_jsonl_rows_that_are_not_json_or_have_bad_keys_are_reported(tmp_path):
    (tmp_path / "s.txt").write_text("from a file")
    lines = [json.dumps({"text": "first"}),
             "{not json",
             "",
             json.dumps(["a", "list"]),
             json.dumps({"key": "nul\x00key", "text": "a NUL in the key"}),
             json.dumps({"key": "back\\slash", "text": "a backslash in the key"}),
             json.dumps({"text": ["not", "a", "string"]}),
             json.dumps({"text": "x" * 5000, "key": "big"}),
             json.dumps({"text": "s.txt"})]
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("\n".join(lines))
    report = convert_to_shards(manifest, tmp_path / "out", processors=processors(), progress=False)
    keys = [s["__key__"] for s in iter_shard(tmp_path / "out" / "data-000000.tar")]
    assert keys == ["000000000", "big", "000000007"], "default keys count rows, good or bad"
    rows = {r["row"]: r["reason"] for r in report.skipped}
    assert rows[2].startswith("not JSON") and rows[4] == "row is not an object"
    assert "NUL" in rows[5] and "path separator" in rows[6] and "holds a list" in rows[7]
    assert report.samples_skipped == 5 and report.samples_written == 3


# ------------------------------------------------------------------------------ 2. nothing merged, mixed or lost
def test_folder_files_that_give_one_key_are_reported_not_merged(tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a_b").mkdir()
    (data / "a" / "b_0001.jpg").write_bytes(png_bytes(0))
    (data / "a_b" / "0001.txt").write_text("text of another sample")
    (data / "a_b" / "0002.txt").write_text("an innocent bystander")
    report = convert_to_shards(data, tmp_path / "out", processors=processors(), progress=False)
    samples = {s["__key__"]: s for s in iter_shard(tmp_path / "out" / "data-000000.tar")}
    assert set(samples) == {"a_b_0001", "a_b_0002"} and "txt" not in samples["a_b_0001"], "not merged"
    (entry,) = [r for r in report.skipped if r["source"].endswith("0001.txt")]
    assert entry["key"] == "a_b_0001" and "a/b_0001.jpg" in entry["reason"] and "not merged" in entry["reason"]


def test_an_output_folder_holding_another_dataset_is_refused_unless_overwrite(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "0.txt").write_text("some text")
    out = tmp_path / "out"
    out.mkdir()
    with wds.TarWriter(str(out / "world-000000.tar")) as writer:
        writer.write({"__key__": "w0", "txt": "another dataset"})
    (out / "manifest.json").write_text(json.dumps({"shards": [{"name": "world-000000.tar", "samples": 1}],
                                                   "created_by": "anchorbind world"}))
    (out / "world-000000.tar.anchor.json").write_text("{}")
    argv = ["shards", str(tmp_path / "data"), "--out", str(out), "--workers", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a dataset" in err and "--overwrite" in err
    assert "anchorbind world" in err and sorted(p.name for p in out.glob("*.tar")) == ["world-000000.tar"]
    # a manifest alone is a dataset too
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "manifest.json").write_text("{}")
    with pytest.raises(PlanMismatchError, match="already holds a dataset"):
        convert_to_shards(tmp_path / "data", lone, processors=processors(), progress=False)
    # --overwrite replaces the previous dataset (its shards and their cache sidecars), nothing else
    assert cli.main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["data-000000.tar"]
    assert not (out / "world-000000.tar.anchor.json").exists()
    assert json.loads((out / "manifest.json").read_text())["created_by"] == "anchorbind shards"
    # .tar files that no conversion made are never deleted, even with --overwrite
    (out / "mine.tar").write_bytes((out / "data-000000.tar").read_bytes())
    assert cli.main([*argv, "--overwrite"]) == 2
    assert "mine.tar" in capsys.readouterr().err and (out / "mine.tar").exists()


def test_the_world_writer_names_the_one_setting_that_differs(tmp_path):
    write_world_shards(tmp_path, train=1, test=0, seed=1, shard_size=1, world_cfg=TINY_WORLD)
    with pytest.raises(PlanMismatchError) as caught:
        write_world_shards(tmp_path, train=1, test=0, seed=1, shard_size=1,
                           world_cfg=WorldConfig(image_size=48, supersample=1))
    message = str(caught.value)
    assert "world.image_size: 32 there, 48 now" in message and "\n" not in message and len(message) < 400


# ------------------------------------------------------------------------------ 2. the cache copies every member
@pytest.fixture(scope="module")
def anchor() -> FrozenAnchor:
    return data_anchor()


ANCHOR = {"weights": ANCHOR_CONFIG.weights, "image_size": ANCHOR_CONFIG.image_size}


def test_the_cache_keeps_every_member_byte_for_byte(tmp_path, anchor):
    shard = tmp_path / "odd-000000.tar"
    members = [
        ("README", b"a member without an extension"),
        ("s0.jpg", png_bytes(0)),                     # PNG bytes under .jpg: decodes anyway
        ("s0.txt", b"zero"),
        ("s1.PNG", png_bytes(1)),                     # upper-case extension
        ("s1.Caption.TXT", b"one"),                   # several dots, mixed case
        ("nested/", None),                            # a directory member
        ("nested/dir/s2.png", png_bytes(2)),          # nested folders
        ("nested/dir/s2.meta.data.json", b"{}"),
        ("nested/dir/NOTES", b"no extension, nested"),
        ("s3.txt", b"no image here"),
        ("s4.png", b"not an image"),                  # kept, reported
    ]
    write_tar(shard, members)
    members = tar_members(shard)  # as tarfile reads them back (a directory's name loses its "/")
    report = build_anchor_cache(str(shard), ANCHOR, batch_size=2, device="cpu", progress=False, in_place=True)
    assert report.written == [str(shard)] and report.samples == 3
    assert [f["key"] for f in report.failures] == ["s4"]
    after = tar_members(shard)
    assert [m for m in after if "anchor" not in m[0]] == members, "names, bytes and order unchanged"
    added = [name for name, _ in after if "anchor" in name]
    assert added == ["s0.anchor.npy", "s0.anchor_id.txt", "s1.anchor.npy", "s1.anchor_id.txt",
                     "nested/dir/s2.anchor.npy", "nested/dir/s2.anchor_id.txt"]
    samples = {s["__key__"]: s for s in iter_shard(shard)}
    assert samples["s1"]["anchor_id.txt"].decode() == anchor.identity and "png" in samples["s1"]
    assert "anchor.npy" in samples["nested/dir/s2"]
    # caching again (another anchor) replaces only the cache's own members
    build_anchor_cache(str(shard), {"weights": "none", "image_size": 64}, batch_size=8, device="cpu", progress=False,
                       in_place=True)
    again = tar_members(shard)
    assert [m for m in again if "anchor" not in m[0]] == members
    assert [n for n, _ in again if "anchor" in n] == added


def test_a_shard_cut_at_a_member_boundary_is_not_cached(tmp_path, anchor):
    shard = tmp_path / "cut-000000.tar"
    write_tar(shard, [("s0.png", png_bytes(0)), ("s1.png", png_bytes(1))])
    with tarfile.open(shard) as tar:
        cut = tar.getmember("s1.png").offset  # the header of the second member: a valid-looking prefix
    data = shard.read_bytes()[:cut]
    shard.write_bytes(data)
    report = build_anchor_cache(str(shard), ANCHOR, batch_size=8, device="cpu", progress=False, in_place=True)
    assert [f["shard"] for f in report.failed_shards] == [str(shard)]
    assert "truncated" in report.failed_shards[0]["reason"]
    assert shard.read_bytes() == data, "left untouched"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------ 2. killed runs
KILL_AT_FIRST_REPLACE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    real_replace = os.replace
    def replace(src, dst):  # SIGKILL at the first rename of a finished shard: nothing can clean up
        if str(dst).endswith(".tar"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    os.replace = replace
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "shards":
        from anchorbind.pipelines.shards.convert import convert_to_shards
        from tests.data_utils import processors
        convert_to_shards(out.parent / "data", out, shard_size=1, processors=processors(), progress=False)
    elif mode == "world":
        from anchorbind.pipelines.shards.world import write_world_shards
        from anchorbind.pipelines.world import WorldConfig
        write_world_shards(out, train=2, test=0, shard_size=1, world_cfg=WorldConfig(image_size=32, supersample=1))
    else:
        from anchorbind.data.cache import build_anchor_cache
        from tests.data_utils import ANCHOR_CONFIG
        build_anchor_cache(str(out), {"weights": ANCHOR_CONFIG.weights, "image_size": ANCHOR_CONFIG.image_size},
                           device="cpu", progress=False, in_place=mode == "cache", num_workers=0)
""")


def kill_during(mode: str, out) -> None:
    done = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_REPLACE, mode, str(out)], cwd=REPO,
                          env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if any(is_temporary(part) for part in p.relative_to(folder).parts))


def test_killed_shards_world_and_cache_leave_nothing_read_and_the_next_run_cleans_up(tmp_path, anchor):
    (tmp_path / "data").mkdir()
    for i in range(2):
        (tmp_path / "data" / f"{i}.png").write_bytes(png_bytes(i))
    # shards: killed while moving its first finished shard out of the staging folder
    out = tmp_path / "out"
    kill_during("shards", out)
    assert [name for name in leftovers(out) if name.startswith(".converting-")], leftovers(out)
    assert not list(out.glob("*.tar")) and not (out / "manifest.json").exists()
    report = convert_to_shards(tmp_path / "data", out, shard_size=1, processors=processors(), progress=False)
    assert report.samples_written == 2 and not leftovers(out)
    # world: killed at its first finished shard
    world = tmp_path / "world"
    kill_during("world", world)
    assert leftovers(world / "train"), "a temporary shard is left"
    with pytest.raises(FileNotFoundError):
        expand_shards(str(world / "train"))  # never read as a shard
    write_world_shards(world, train=2, test=0, shard_size=1, world_cfg=TINY_WORLD)
    assert not leftovers(world) and len(expand_shards(str(world / "train"))) == 2
    # cache: killed when its rewritten shard is complete
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    alive = out / f".data-000001.tar.caching-{os.getppid()}"  # a live process's temporary: not touched
    alive.write_bytes(b"in progress elsewhere")
    kill_during("cache", out)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before, "the originals are untouched"
    stale = [n for n in leftovers(out) if n != alive.name]
    assert stale and all(".caching-" in n for n in stale)
    assert expand_shards(str(out)) == [str(out / "data-000000.tar"), str(out / "data-000001.tar")]
    build_anchor_cache(str(out), ANCHOR, device="cpu", progress=False, in_place=True)
    assert leftovers(out) == [alive.name]
    after_in_place = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    # sidecar cache: killed when its first sidecar is complete; the data is never touched
    kill_during("sidecar", out)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == after_in_place
    stale = [n for n in leftovers(out / "anchor-cache") if ".writing-" in n]
    assert stale, leftovers(out / "anchor-cache")
    report = build_anchor_cache(str(out), ANCHOR, device="cpu", progress=False, num_workers=0)
    assert len(report.written) == 2 and not leftovers(out / "anchor-cache")
    assert expand_shards(str(out)) == [str(out / "data-000000.tar"), str(out / "data-000001.tar")]


# ------------------------------------------------------------------------------ 3. bounded memory and time
@pytest.mark.timeout(120)
def test_large_and_special_files_are_skipped_unread(tmp_path):
    (tmp_path / "small.txt").write_text("fits")
    (tmp_path / "large.txt").write_text("x" * 5000)
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"text_file": "small.txt"}, {"text_file": "large.txt"}, {"text_file": "/dev/zero"}]))
    report = convert_to_shards(manifest, tmp_path / "out", processors=processors(), progress=False,
                               max_file_bytes=1000)
    reasons = {r["source"]: r["reason"] for r in report.skipped if r["modality"]}
    assert reasons[str(tmp_path / "large.txt")].startswith("file too large")
    assert reasons["/dev/zero"] == "not a regular file"
    assert report.samples_written == 1
