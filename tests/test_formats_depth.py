"""``anchorbind shards --format nyuv2 | sunrgbd`` on tiny replicas of the official layouts.

NYU Depth v2: an HDF5 ``nyu_depth_v2_labeled.mat`` laid out as MATLAB v7.3 writes it (512-byte
user block, arrays transposed, ``sceneTypes`` a cell array of object references to uint16 char
codes) and a v5 ``splits.mat``. SUN RGB-D: ``SUNRGBD/<sensor>/.../<scene>/`` folders with
bit-rotated 16-bit depth PNGs, ``scene.txt``, ``intrinsics.txt``, and the toolbox's ``allsplit.mat``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from anchorbind.errors import ConfigError, InputError
from anchorbind.pipelines.shards import convert
from anchorbind.pipelines.shards.formats import nyuv2, read_format, sunrgbd
from tests.test_cli_errors import anchorbind, assert_one_line_error

H, W = 6, 10  # not square: a transposed axis cannot go unnoticed

NYU_SCENES = ["living_room", "cafe", "bedroom", "study", "home_office", "kitchen", "bathroom"]
NYU_TRAIN, NYU_TEST = [1, 2, 4], [3, 5, 6, 7, 99]  # 99: out of range; 7: unreadable scene type


def _rgb(i: int) -> np.ndarray:
    """A distinct ``(H, W, 3)`` image per sample."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 20 + i, y * 30 + i, np.full((H, W), 7 * i)], axis=-1).astype(np.uint8)


def _depth(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return (0.5 + 0.1 * i + 0.0137 * x + 0.21 * y).astype(np.float32)


def _matlab_cellstr(handle: h5py.File, name: str, strings: list[str | None]) -> None:
    """A MATLAB v7.3 cell array of strings: ``(1, N)`` references into ``#refs#``, each ``(len, 1)`` uint16.

    ``None`` stores a float array instead of characters (an entry that cannot be read as a string).
    """
    refs = handle.require_group("#refs#")
    out = handle.create_dataset(name, (1, len(strings)), dtype=h5py.ref_dtype)
    for i, text in enumerate(strings):
        if text is None:
            item = refs.create_dataset(f"{name}{i}", data=np.zeros((3, 1)))
        else:
            item = refs.create_dataset(f"{name}{i}", data=np.array([[ord(c)] for c in text], dtype=np.uint16))
            item.attrs["MATLAB_class"] = np.bytes_("char")
            item.attrs["MATLAB_int_decode"] = np.int32(2)
        out[0, i] = item.ref
    out.attrs["MATLAB_class"] = np.bytes_("cell")


def make_nyu(root: Path, *, splits: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    mat = root / nyuv2.LABELED
    n = len(NYU_SCENES)
    with h5py.File(mat, "w", userblock_size=512) as f:
        # MATLAB stores (H, W, 3, N) column-major: h5py sees (N, 3, W, H)
        f.create_dataset("images", data=np.stack([_rgb(i).transpose(2, 1, 0) for i in range(1, n + 1)]))
        f.create_dataset("depths", data=np.stack([_depth(i).T for i in range(1, n + 1)]))
        scenes: list[str | None] = list(NYU_SCENES)
        scenes[6] = None  # sample 7
        _matlab_cellstr(f, "sceneTypes", scenes)
    with open(mat, "r+b") as handle:  # the MATLAB text header in the user block
        handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2012 HDF5 schema 1.00 .")
    if splits:
        savemat(root / nyuv2.SPLITS, {"trainNdxs": np.array(NYU_TRAIN, dtype=float)[:, None],
                                      "testNdxs": np.array(NYU_TEST, dtype=float)[:, None]})
    return root


def read_shards(folder: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {member: bytes}}`` of every shard in ``folder``."""
    samples: dict[str, dict[str, bytes]] = {}
    shards = sorted(folder.glob("*.tar"))
    assert shards, f"no shards in {folder}"
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_nyuv2_cli_writes_official_splits_with_labels_images_and_metric_depth(tmp_path):
    root = make_nyu(tmp_path / "nyu")
    work = tmp_path / "work"
    done = anchorbind("shards", str(root), "--format", "nyuv2", "--out", str(tmp_path / "out"), "--workers", "1",
                      "--option", f"work_dir={work}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    train, test = read_shards(tmp_path / "out" / "train"), read_shards(tmp_path / "out" / "test")
    assert sorted(train) == ["0001", "0002", "0004"]
    assert sorted(test) == ["0003", "0005", "0006"]
    categories = {}
    for key, sample in {**train, **test}.items():
        index = int(key)
        meta = json.loads(sample["json"])
        categories[key] = meta["attributes"]["category"]
        assert meta["attributes"]["scene"] == NYU_SCENES[index - 1]
        assert meta["dataset"] == {"name": "nyuv2", "split": "train" if key in train else "test", "index": index,
                                   "protocol": {"task": "zero_shot", "modality": "depth", "label": "category",
                                                "classes": list(nyuv2.CLASSES), "split": "test"}}
        image = np.asarray(Image.open(io.BytesIO(sample["png"])))
        np.testing.assert_array_equal(image, _rgb(index))
        depth = np.load(io.BytesIO(sample["depth.npy"]))
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        np.testing.assert_allclose(depth, _depth(index), atol=1e-3)
    assert categories == {"0001": "living room", "0002": "others", "0003": "bedroom", "0004": "others",
                          "0005": "home office", "0006": "kitchen"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # what reading the layout skipped
    reasons = " | ".join(f"{s['source']}: {s['reason']}" for s in report["skipped"])
    assert "index 99 is not in 1..7" in reasons, reasons
    assert f"{nyuv2.LABELED}[7]" in reasons and "char codes" in reasons, reasons
    assert work.is_dir() and not any(work.iterdir()), "the staging folder outlived the process"


def test_nyuv2_without_splits_writes_all_and_says_why(tmp_path):
    root = make_nyu(tmp_path / "nyu", splits=False)
    report = convert.ConversionReport()
    splits = read_format("nyuv2", root, report, {"work_dir": str(tmp_path / "work")})
    assert list(splits) == ["all"]
    assert [row.key for row in splits["all"]] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    assert any("splits.mat" in s["source"] and "split 'all'" in s["reason"] for s in report.skipped), report.skipped
    row = splits["all"][1]
    assert row.meta["attributes"] == {"category": "others", "scene": "cafe"}
    assert set(row.members) == {"image", "depth"} and row.members["depth"][1] == "depth.npy"
    assert Path(row.members["depth"][0]).parent.parent == tmp_path / "work"


def test_nyuv2_missing_or_wrong_mat_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    done = anchorbind("shards", str(tmp_path / "empty"), "--format", "nyuv2", "--out", str(tmp_path / "out"),
                      cwd=tmp_path)
    assert_one_line_error(done, 1, nyuv2.LABELED, "missing")
    (tmp_path / "v5").mkdir()
    savemat(tmp_path / "v5" / nyuv2.LABELED, {"images": np.zeros(3)})  # MATLAB v5, not HDF5
    with pytest.raises(InputError, match=r"not a MATLAB v7\.3"):
        read_format("nyuv2", tmp_path / "v5", convert.ConversionReport(), {})


# ------------------------------------------------------------------------------------------ SUN RGB-D
SUN_PREFIX = "/n/fs/sun3d/data/SUNRGBD/"
SUN = {  # relative folder -> (scene, depth in mm or None for a corrupt PNG)
    "kv1/NYUdata/NYU0001": ("living_room", 1),
    "kv1/NYUdata/NYU0002": ("basement", 2),
    "kv2/kinect2data/000002_2014-05-26_14-23-37_260595134347_rgbf000103-resize": ("study_space", 3),
    "kv2/align_kv2/2014-12-05_11-53-29_260595134347_rgbf000020-resize": ("office", None),
}
SUN_TRAIN = ["kv1/NYUdata/NYU0001", "kv2/align_kv2/2014-12-05_11-53-29_260595134347_rgbf000020-resize",
             "kv1/NYUdata/NYU9999"]  # NYU9999: listed, absent
SUN_TEST = ["kv1/NYUdata/NYU0002/"]  # the kv2 study_space folder is in neither: reported


def _millimetres(i: int) -> np.ndarray:
    """Depth in mm with no measurement (0), beyond the 8 m clip and high bits that the rotation moves."""
    mm = (np.arange(H * W, dtype=np.int64).reshape(H, W) * 997 * i) % 12000
    mm[0, 0], mm[0, 1], mm[0, 2] = 0, 65535, 8191
    return mm


def _rotate(mm: np.ndarray) -> np.ndarray:
    """How SUN RGB-D stores millimetres (the inverse of ``read3dPoints.m``'s bit rotation)."""
    return (((mm << 3) | (mm >> 13)) & 0xFFFF).astype(np.uint16)


def make_sun(root: Path, *, allsplit: bool = True) -> Path:
    for i, (relative, (scene, depth)) in enumerate(SUN.items(), start=1):
        folder = root / "SUNRGBD" / relative
        (folder / "image").mkdir(parents=True)
        (folder / "depth").mkdir()
        name = folder.name[:7]
        Image.fromarray(_rgb(i)).save(folder / "image" / f"{name}.jpg")
        if depth is None:
            (folder / "depth" / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        else:
            Image.fromarray(_rotate(_millimetres(depth))).save(folder / "depth" / f"{name}.png")
        (folder / "scene.txt").write_text(scene + "\n")
        (folder / "intrinsics.txt").write_text(f"{520 + i} 0 {W / 2}\n0 {521 + i} {H / 2}\n0 0 1\n")
    (root / "SUNRGBD" / "kv1" / "NYUdata" / "NYU0002" / "intrinsics.txt").write_text("not numbers\n")
    if allsplit:
        split = root / sunrgbd.ALLSPLIT
        split.parent.mkdir(parents=True)
        cell = lambda paths: np.array([SUN_PREFIX + p for p in paths], dtype=object)[None, :]  # noqa: E731
        savemat(split, {"alltrain": cell(SUN_TRAIN), "alltest": cell(SUN_TEST)})
    return root


def test_unrotate_inverts_the_stored_rotation_and_clips_at_8m():
    mm = np.arange(65536, dtype=np.int64)
    np.testing.assert_array_equal(sunrgbd.unrotate(_rotate(mm)), np.minimum(mm, 8000))


def test_sunrgbd_cli_writes_official_splits_labels_and_depth_in_metres(tmp_path):
    root = make_sun(tmp_path / "sun")
    done = anchorbind("shards", str(root), "--format", "sunrgbd", "--out", str(tmp_path / "out"), "--workers", "1",
                      "--option", f"work_dir={tmp_path / 'work'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    train, test = read_shards(tmp_path / "out" / "train"), read_shards(tmp_path / "out" / "test")
    assert sorted(train) == ["kv1_NYUdata_NYU0001"] and sorted(test) == ["kv1_NYUdata_NYU0002"]
    for key, sample, relative in [("kv1_NYUdata_NYU0001", train["kv1_NYUdata_NYU0001"], SUN_TRAIN[0]),
                                  ("kv1_NYUdata_NYU0002", test["kv1_NYUdata_NYU0002"], "kv1/NYUdata/NYU0002")]:
        scene, seed = SUN[relative]
        meta = json.loads(sample["json"])
        assert meta["attributes"] == {"category": scene.replace("_", " "), "scene": scene}
        assert meta["dataset"] == {"name": "sunrgbd", "split": "train" if key in train else "test", "sensor": "kv1",
                                   "path": relative,
                                   "protocol": {"task": "zero_shot", "modality": "depth", "label": "category",
                                                "classes": list(sunrgbd.CLASSES), "split": "test"}}
        assert sample["jpg"] == next((root / "SUNRGBD" / relative / "image").glob("*.jpg")).read_bytes()
        stored = np.asarray(Image.open(io.BytesIO(sample["depth.png"])))
        expected = np.minimum(_millimetres(seed), 8000) / 1000.0
        np.testing.assert_allclose(stored / 1000.0, expected, atol=1e-3)
        assert stored[0, 0] == 0 and stored[0, 1] == 8000
    assert json.loads(train["kv1_NYUdata_NYU0001"]["json"])["intrinsics"] == [[521.0, 0.0, 5.0], [0.0, 522.0, 3.0],
                                                                               [0.0, 0.0, 1.0]]
    assert "intrinsics" not in json.loads(test["kv1_NYUdata_NYU0002"]["json"])  # unparsable file: left out
    assert len(sunrgbd.CLASSES) == 19 and "basement" not in sunrgbd.CLASSES
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # what reading the layout skipped
    by_source = {s["source"]: s["reason"] for s in report["skipped"]}
    broken = root / "SUNRGBD" / "kv2/align_kv2/2014-12-05_11-53-29_260595134347_rgbf000020-resize"
    assert "PNG" in by_source[str(broken)], by_source
    assert "not listed" in by_source[str(root / "SUNRGBD" / "kv2/kinect2data" /
                                          "000002_2014-05-26_14-23-37_260595134347_rgbf000103-resize")]
    assert "no such folder" in by_source[SUN_PREFIX + "kv1/NYUdata/NYU9999"]
    assert report["samples_skipped"] == 3
    assert not any((tmp_path / "work").iterdir()), "the staging folder outlived the process"


def test_sunrgbd_depth_reads_as_metres_through_the_depth_plugin(tmp_path):
    from anchorbind.modalities.depth.reading import read_depth

    root = make_sun(tmp_path / "sun", allsplit=False)
    report = convert.ConversionReport()
    splits = read_format("sunrgbd", root, report, {"work_dir": str(tmp_path / "work")})
    assert list(splits) == ["all"] and len(splits["all"]) == 3
    assert any("allsplit.mat" in s["source"] and "split 'all'" in s["reason"] for s in report.skipped)
    row = next(r for r in splits["all"] if r.key.startswith("kv2_kinect2data"))
    assert row.meta["attributes"]["category"] == "study space" and row.meta["dataset"]["sensor"] == "kv2"
    reading = read_depth(row.members["depth"][0])
    np.testing.assert_allclose(reading.metres, np.minimum(_millimetres(3), 8000) / 1000.0, atol=1e-3)
    assert reading.invalid[0, 0] and not reading.invalid[0, 1]


def test_sunrgbd_missing_folder_is_one_line_error(tmp_path):
    (tmp_path / "root").mkdir()
    done = anchorbind("shards", str(tmp_path / "root"), "--format", "sunrgbd", "--out", str(tmp_path / "out"),
                      cwd=tmp_path)
    assert_one_line_error(done, 1, "SUNRGBD", "missing")
    make_sun(tmp_path / "sun")
    done = anchorbind("shards", str(tmp_path / "sun"), "--format", "sunrgbd", "--out", str(tmp_path / "out"),
                      "--option", "depth_folder=../depth", cwd=tmp_path)
    assert_one_line_error(done, 2, "depth_folder", "'../depth'")
    for name, root in [("sunrgbd", tmp_path / "sun"), ("nyuv2", make_nyu(tmp_path / "nyu"))]:
        with pytest.raises(ConfigError, match="workdir"):
            read_format(name, root, convert.ConversionReport(), {"workdir": str(tmp_path)})
