"""``anchorbind shards ROOT --format esc50 | clotho | audiocaps`` on tiny replicas of each dataset's
official layout (the authors' file names and CSV columns), written here: nothing is downloaded."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anchorbind.errors import ConfigError, InputError
from anchorbind.pipelines.shards.convert import ConversionReport
from anchorbind.pipelines.shards.formats import read_format
from anchorbind.pipelines.shards.formats.common import safe_key
from tests.test_cli_errors import anchorbind, run_in_process

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take"
CLOTHO_HEADER = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5"
AUDIOCAPS_HEADER = "audiocap_id,youtube_id,start_time,caption"


def tone(path: Path, *, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> Path:
    """A short sine (the audio processor refuses silent or < 0.1 s audio); format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def read_shards(folder: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {member: bytes}}`` of every ``data-*.tar`` in ``folder``."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("data-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def meta(sample: dict[str, bytes]) -> dict:
    return json.loads(sample["json"])


def skipped(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["skipped"]


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------- ESC-50
def make_esc50(root: Path) -> Path:
    (root / "meta").mkdir(parents=True)
    rows = [
        "1-100032-A-0.wav,1,0,dog,True,100032,A",        # line 2
        "1-17367-A-10.wav,1,10,rain,True,17367,A",       # line 3
        "2-50665-A-20.wav,2,20,crying_baby,True,50665,A",  # line 4
        "3-1000-A-5.wav,x,5,cat,False,1000,A",           # line 5: fold is not an integer
        "4-2000-B-1.wav,4,1,rooster,False,2000,B",       # line 6: no such clip
        "5-3000-A-2.wav,5",                              # line 7: too few columns
    ]
    (root / "meta" / "esc50.csv").write_text("\n".join([ESC50_HEADER, *rows]) + "\n")
    for i, name in enumerate(["1-100032-A-0.wav", "1-17367-A-10.wav", "2-50665-A-20.wav", "3-1000-A-5.wav",
                              "5-3000-A-2.wav"]):
        tone(root / "audio" / name, rate=44100, freq=300.0 + 50 * i)
    return root


def test_esc50_cli_writes_one_split_with_folds_labels_and_reports_bad_rows(tmp_path):
    root, out = make_esc50(tmp_path / "ESC-50-master"), tmp_path / "esc50"
    done = anchorbind("shards", str(root), "--format", "esc50", "--out", str(out), "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "all: wrote 3 samples" in done.stdout
    samples = read_shards(out)  # one split: written into --out itself
    assert sorted(samples) == ["1-100032-A-0", "1-17367-A-10", "2-50665-A-20"]
    assert set(samples["2-50665-A-20"]) == {"wav", "json"}
    assert meta(samples["2-50665-A-20"]) == {
        "attributes": {"category": "crying baby", "esc10": True},
        "dataset": {"name": "esc50", "split": "all", "fold": 2, "target": 20,
                    "protocol": {"task": "zero_shot", "modality": "audio", "label": "category", "group_by": "fold"}},
        "source": {"filename": "2-50665-A-20.wav", "src_file": "50665", "take": "A"},
    }
    assert [meta(samples[k])["dataset"]["fold"] for k in sorted(samples)] == [1, 1, 2]
    assert samples["1-100032-A-0"]["wav"] == (root / "audio" / "1-100032-A-0.wav").read_bytes()
    by_row = {e["row"]: e for e in skipped(out)}
    assert sorted(by_row) == [5, 6, 7]
    assert "fold 'x' is not an integer" in by_row[5]["reason"]
    assert by_row[6]["reason"] == "missing file" and by_row[6]["key"] == "4-2000-B-1"
    assert "missing column" in by_row[7]["reason"]
    assert json.loads((out / "report.json").read_text())["samples_skipped"] == 3


def test_esc50_missing_csv_or_column_is_one_line_error(tmp_path, capsys):
    root = tmp_path / "esc"
    tone(root / "audio" / "1-100032-A-0.wav")
    done = run_in_process(capsys, "shards", str(root), "--format", "esc50", "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    assert_one_line_error(done.stderr, str(root / "meta" / "esc50.csv"), "missing")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("filename,fold,category\n1-100032-A-0.wav,1,dog\n")
    done = run_in_process(capsys, "shards", str(root), "--format", "esc50", "--out", str(tmp_path / "o"))
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "no column target")
    done = run_in_process(capsys, "shards", str(root), "--format", "esc50", "--option", "x=1",
                          "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "takes no options")


def test_safe_key_leaves_no_dot_separator_or_control_character():
    assert safe_key("1-100032-A-0") == "1-100032-A-0"
    assert safe_key("05 - Birds at dawn (edit).v2") == "05_-_Birds_at_dawn_edit_v2"
    assert safe_key("a/b\\c\td\x7fe.f") == "a_b_c_d_e_f"
    assert safe_key("Ümlaut café") == "Ümlaut_café"
    assert safe_key("...") == "clip"


# ---------------------------------------------------------------------------------------- Clotho
def write_csv(path: Path, lines: list[str], *, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\r\n".join(lines) + "\r\n").encode())


def make_clotho(root: Path) -> Path:
    write_csv(root / "clotho_captions_development.csv", [
        CLOTHO_HEADER,
        'Santa Motor.wav,A motor hums.,"A man says ""hello"", then leaves.",Cars pass by.,An engine idles.,Wind.',
        "05 - Birds at dawn (edit).v2.wav,Birds chirp at dawn.,Many birds sing.,A bird calls.,,",   # line 3
        ",An orphan caption.,b,c,d,e",                                      # line 4: empty file_name
        "missing clip.wav,Nothing here.,b,c,d,e",                           # line 5: no such file
    ], bom=True)
    write_csv(root / "clotho_captions_validation.csv", [CLOTHO_HEADER, "rain.wav,Rain falls.,b,c,d,e"])
    tone(root / "development" / "Santa Motor.wav", rate=44100)
    tone(root / "development" / "05 - Birds at dawn (edit).v2.wav", freq=600.0)
    tone(root / "validation" / "rain.wav", freq=700.0)
    return root


def test_a_clip_whose_audio_cannot_be_decoded_is_skipped_whole(tmp_path, capsys):
    """Captions without their clip are worthless for retrieval: the sample goes, and the report says why."""
    root, out = make_clotho(tmp_path / "clotho"), tmp_path / "out"
    (root / "development" / "Santa Motor.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEbroken")
    done = run_in_process(capsys, "shards", str(root), "--format", "clotho", "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(read_shards(out / "development")) == ["05_-_Birds_at_dawn_edit_v2"]
    reasons = {(e["key"], e["reason"]) for e in skipped(out / "development")}
    assert ("Santa_Motor", "its audio could not be read (required)") in reasons, reasons


def test_clotho_writes_each_present_split_with_all_captions(tmp_path, capsys):
    root, out = make_clotho(tmp_path / "clotho"), tmp_path / "out"
    done = run_in_process(capsys, "shards", str(root), "--format", "clotho", "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["development", "report.json", "validation"]  # no evaluation CSV
    dev, val = read_shards(out / "development"), read_shards(out / "validation")
    assert sorted(dev) == ["05_-_Birds_at_dawn_edit_v2", "Santa_Motor"] and sorted(val) == ["rain"]
    santa = dev["Santa_Motor"]
    assert set(santa) == {"wav", "txt", "json"}
    assert santa["txt"].decode() == "A motor hums."
    assert meta(santa) == {
        "captions": ["A motor hums.", 'A man says "hello", then leaves.', "Cars pass by.", "An engine idles.", "Wind."],
        "dataset": {"name": "clotho", "split": "development",
                    "protocol": {"task": "caption_retrieval", "modality": "audio", "captions": "captions"}},
        "source": {"file_name": "Santa Motor.wav"},
    }
    birds = meta(dev["05_-_Birds_at_dawn_edit_v2"])
    assert birds["captions"] == ["Birds chirp at dawn.", "Many birds sing.", "A bird calls."]
    assert birds["source"]["file_name"] == "05 - Birds at dawn (edit).v2.wav"
    assert meta(val["rain"])["dataset"]["split"] == "validation"
    by_row = {e["row"]: e for e in skipped(out)}  # what reading the layout skipped, of every split
    assert sorted(by_row) == [4, 5]
    assert "empty file_name" in by_row[4]["reason"]
    assert by_row[5]["reason"] == "missing file" and by_row[5]["source"].endswith("missing clip.wav")


def test_clotho_without_any_csv_or_audio_folder_is_one_line_error(tmp_path):
    root = tmp_path / "clotho"
    tone(root / "development" / "a.wav")
    done = anchorbind("shards", str(root), "--format", "clotho", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "clotho_captions_development.csv", "clotho_captions_evaluation.csv")
    write_csv(root / "clotho_captions_evaluation.csv", [CLOTHO_HEADER, "a.wav,x,b,c,d,e"])
    with pytest.raises(InputError, match="audio folder of Clotho's evaluation split"):
        read_format("clotho", root, ConversionReport(), {})


# ---------------------------------------------------------------------------------------- AudioCaps
def make_audiocaps(root: Path) -> Path:
    test = [AUDIOCAPS_HEADER]
    for i in range(5):  # two clips' rows interleaved: grouping goes by (youtube_id, start_time)
        test.append(f"{100 + i},--0w1YA1Hm4,30,Caption {i} of the kept clip")
        test.append(f"{200 + i},abcDEF_-123,0,Caption {i} of a taken-down clip")
    write_csv(root / "dataset" / "test.csv", test)
    write_csv(root / "dataset" / "val.csv",
              [AUDIOCAPS_HEADER, *(f"{300 + i},zzzVAL00001,10,\"Val caption {i}, with a comma\"" for i in range(5))])
    write_csv(root / "dataset" / "train.csv",
              [AUDIOCAPS_HEADER, "1,trainclip01,50,A dog barks", "2,trainclip02,abc,Bad start time"])
    tone(root / "audio" / "test" / "--0w1YA1Hm4_30.wav")          # per-split folder, default first pattern
    tone(root / "audio" / "zzzVAL00001.flac", freq=500.0)         # top folder, fallback pattern {youtube_id}
    tone(root / "audio" / "trainclip01_50.wav", freq=800.0)
    return root


def test_audiocaps_groups_captions_per_clip_and_lists_clips_not_downloaded(tmp_path, capsys):
    root, out = make_audiocaps(tmp_path / "audiocaps"), tmp_path / "out"
    done = run_in_process(capsys, "shards", str(root), "--format", "audiocaps", "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr
    test, val, train = (read_shards(out / s) for s in ("test", "val", "train"))
    assert sorted(test) == ["--0w1YA1Hm4_30"]  # 10 rows -> 2 clips, one not downloaded
    kept = test["--0w1YA1Hm4_30"]
    assert set(kept) == {"wav", "txt", "json"}
    assert kept["txt"].decode() == "Caption 0 of the kept clip"
    assert meta(kept) == {
        "captions": [f"Caption {i} of the kept clip" for i in range(5)],
        "dataset": {"name": "audiocaps", "split": "test",
                    "protocol": {"task": "caption_retrieval", "modality": "audio", "captions": "captions"}},
        "source": {"youtube_id": "--0w1YA1Hm4", "start_time": 30, "audiocap_ids": [100, 101, 102, 103, 104]},
    }
    assert list(val) == ["zzzVAL00001_10"] and set(val["zzzVAL00001_10"]) == {"flac", "txt", "json"}
    assert meta(val["zzzVAL00001_10"])["captions"] == [f"Val caption {i}, with a comma" for i in range(5)]
    assert list(train) == ["trainclip01_50"] and meta(train["trainclip01_50"])["captions"] == ["A dog barks"]
    report = json.loads((out / "report.json").read_text())  # what reading the layout skipped, of every split
    missing = [e for e in report["skipped"] if e["reason"].startswith("clip not downloaded")]
    assert [(e["key"], e["row"]) for e in missing] == [("abcDEF_-123_0", 3)]
    assert "youtube_id abcDEF_-123" in missing[0]["reason"] and "abcDEF_-123_0.*" in missing[0]["reason"]
    malformed = [e for e in report["skipped"] if "start_time 'abc'" in e["reason"]]
    assert [e["row"] for e in malformed] == [3]
    assert report["samples_skipped"] == 2


def test_audiocaps_options_find_clips_by_pattern_in_audio_dir(tmp_path):
    root = tmp_path / "ac"
    write_csv(root / "test.csv", [AUDIOCAPS_HEADER, "7,vidA,20,One", "8,vidA,20,Two", "9,vidB,0,Three"])
    (root / "clips").mkdir(parents=True)
    for name in ("YvidA.wav", "YvidA.flac", "vidB_0.ogg"):  # read only: names are matched, not decoded
        (root / "clips" / name).write_bytes(b"x")
    report = ConversionReport()
    splits = read_format("audiocaps", root, report, {"audio_dir": "clips", "clip_pattern": "Y{youtube_id}"})
    assert list(splits) == ["test"]
    (row,) = splits["test"]
    assert row.key == "vidA_20" and row.members["audio"][:2] == (str(root / "clips" / "YvidA.flac"), "flac")
    assert row.meta["captions"] == ["One", "Two"] and row.members["text"][2] == "One"
    assert [e["key"] for e in report.skipped] == ["vidB_0"] and report.samples_skipped == 1
    report = ConversionReport()
    splits = read_format("audiocaps", root, report,
                         {"audio_dir": str(root / "clips"), "clip_pattern": "Y{youtube_id}|{youtube_id}_{start_time}"})
    assert [r.key for r in splits["test"]] == ["vidA_20", "vidB_0"] and not report.skipped
    for bad in ("{nope}", "{youtube_id}.wav", "x/{youtube_id}"):
        with pytest.raises(ConfigError, match="clip_pattern"):
            read_format("audiocaps", root, ConversionReport(), {"clip_pattern": bad})
    with pytest.raises(ConfigError, match="takes audio_dir, clip_pattern"):
        read_format("audiocaps", root, ConversionReport(), {"audio_folder": "clips"})
    with pytest.raises(InputError, match="downloaded AudioCaps clips"):
        read_format("audiocaps", root, ConversionReport(), {})  # no ROOT/audio
    with pytest.raises(InputError, match=r"train\.csv, val\.csv, test\.csv"):
        read_format("audiocaps", tmp_path / "clips-only", ConversionReport(), {})


def test_readers_report_malformed_rows_with_their_line(tmp_path):
    root = tmp_path / "c"
    write_csv(root / "clotho_captions_validation.csv", [
        CLOTHO_HEADER,
        'a.wav,"A caption over',  # a quoted caption over two lines: the next row starts on line 4
        'two lines",b,c,d,e',
        "../b.wav,x,b,c,d,e",     # line 4: not a plain file name
        "c.wav,,,,,",             # line 5: no caption
        "a.wav,again,b,c,d,e",    # line 6: duplicate
    ])
    (root / "validation").mkdir()
    (root / "validation" / "a.wav").write_bytes(b"x")
    report = ConversionReport()
    rows = read_format("clotho", root, report, {})["validation"]
    assert [(r.key, r.line) for r in rows] == [("a", 2)]
    assert rows[0].meta["captions"][0] == "A caption over\r\ntwo lines"
    assert [(e["row"], e["reason"].split(":")[0]) for e in report.skipped] == [
        (4, "malformed row"), (5, "malformed row"), (6, "duplicate file_name 'a.wav' (row at line 2 has it)")]
