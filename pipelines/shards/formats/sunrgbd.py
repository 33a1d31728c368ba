"""SUN RGB-D (Song et al., CVPR 2015), for ``anchorbind shards ROOT --format sunrgbd``.

Layout, as distributed (``SUNRGBD.zip`` and ``SUNRGBDtoolbox.zip`` from rgbd.cs.princeton.edu, unzipped)::

    ROOT/SUNRGBD/<sensor>/<...>/<scene folder>/   # kv1/NYUdata/NYU0001, kv2/..., realsense/..., xtion/...
        image/<name>.jpg     depth/<name>.png (16-bit, bit-rotated)     scene.txt     intrinsics.txt
    ROOT/SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat   # alltrain (5285) / alltest (5050)

A scene folder is any folder under ``ROOT/SUNRGBD`` holding ``image/``, ``depth/`` or
``scene.txt`` (nothing below it is searched). The depth PNGs store millimetres rotated by three
bits; as the toolbox's ``read3dPoints.m`` does, they are read as
``((raw >> 3) | (raw << 13)) & 0xFFFF`` millimetres and clipped at 8 m (ImageBind issue #134).

Per sample (key: the scene folder's path with ``_`` for ``/`` and ``.``): ``jpg`` (the image file
as is), ``depth.png`` (16-bit millimetres, un-rotated and clipped: the depth plugin's default
``png_scale`` 1000 reads metres; 0 = no measurement) and ``json``::

    {"attributes": {"category": "living room", "scene": "living_room"},
     "dataset": {"name": "sunrgbd", "split": "train" | "test", "sensor": "kv1", "path": "kv1/NYUdata/NYU0001",
                 "protocol": {"task": "zero_shot", "modality": "depth", "label": "category",
                              "classes": [the 19 classes], "split": "test"}},
     "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}   # when intrinsics.txt parses

Splits: a folder is ``train`` or ``test`` when ``allsplit.mat`` lists it (its paths,
``/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001``, are matched by the part after ``SUNRGBD/``);
a folder listed in neither, or a listed path with no folder, is reported. Without
``allsplit.mat`` everything is written as split ``all`` and the missing file is reported.

Classes: ImageBind evaluates zero-shot scene classification from depth on 19 scene classes
(issue #134). Samples of other scenes are kept, with their scene as ``category``; the protocol's
``classes`` lists the 19 of the published evaluation, which uses only those classes' samples.

Options: ``--option depth_folder=depth_bfx`` reads the dataset's in-painted maps (stored the same
way) instead of the raw ``depth/``; ``--option work_dir=DIR`` places the staging folder.

Staging: the converted depth PNGs are written into a fresh folder ``anchorbind-sunrgbd-*`` under
the system temporary folder (or ``work_dir``), removed when the process exits (``atexit``: the
CLI exits once the shards are written). Images are not copied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anchorbind.errors import ConfigError, InputError
from anchorbind.pipelines.shards.convert import ConversionReport, SampleRow
from anchorbind.pipelines.shards.formats.common import check_options
from anchorbind.pipelines.shards.formats.nyuv2 import staging_dir

__all__ = ["CLASSES", "DESCRIPTION", "NAME", "read", "unrotate"]

NAME = "sunrgbd"
DESCRIPTION = "SUN RGB-D (SUNRGBD/ + SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat): RGB + depth, 19 scene classes"
DATA = "SUNRGBD"
ALLSPLIT = Path("SUNRGBDtoolbox") / "traintestSUNRGBD" / "allsplit.mat"
CLASSES: tuple[str, ...] = ("bathroom", "bedroom", "classroom", "computer room", "conference room", "corridor",
                            "dining area", "dining room", "discussion area", "furniture store", "home office",
                            "kitchen", "lab", "lecture theatre", "library", "living room", "office", "rest space",
                            "study space")
"""The 19 evaluated scene classes (ImageBind issue #134), spaces for underscores."""
MAX_DEPTH_MM = 8000
"""``read3dPoints.m`` clips depth at 8 m."""
PROTOCOL: dict[str, Any] = {"task": "zero_shot", "modality": "depth", "label": "category",
                            "classes": list(CLASSES), "split": "test"}
_MARKERS = ("image", "depth", "scene.txt")
OPTIONS = ("depth_folder", "work_dir")


def unrotate(raw: np.ndarray) -> np.ndarray:
    """SUN RGB-D's stored 16-bit depth -> uint16 millimetres, clipped at 8 m (``read3dPoints.m``)."""
    value = np.asarray(raw).astype(np.uint32)
    mm = ((value >> 3) | (value << 13)) & 0xFFFF
    return np.minimum(mm, MAX_DEPTH_MM).astype(np.uint16)


def read(root: Path, report: ConversionReport, options: Mapping[str, str]) -> dict[str, list[SampleRow]]:
    """The scene folders' samples per official split (``all`` without ``allsplit.mat``).

    Raises:
        ConfigError: an unknown ``--option``, or a ``depth_folder`` that is not a folder name.
        InputError: ``ROOT/SUNRGBD`` is missing, or ``allsplit.mat`` exists but cannot be read.
    """
    check_options(NAME, options, OPTIONS)
    depth_folder = options.get("depth_folder", "depth")
    if not depth_folder or depth_folder in (".", "..") or "/" in depth_folder or "\\" in depth_folder:
        raise ConfigError(f"--option depth_folder={depth_folder!r}: the name of a scene folder's subfolder "
                          f"(depth, depth_bfx)")
    data = root / DATA
    if not data.is_dir():
        raise InputError(str(data), f"missing: --format {NAME} needs SUNRGBD.zip unzipped in the root folder "
                                    f"(ROOT/{DATA}/<sensor>/...)")
    folders = dict(_scene_folders(data))  # relative posix path -> folder
    assigned = _assign(root / ALLSPLIT, folders, report)
    staging = staging_dir(NAME, options)
    out: dict[str, list[SampleRow]] = {}
    keys: dict[str, str] = {}
    for relative, split in assigned:
        folder = folders[relative]
        key = re.sub(r"[/.]", "_", relative)
        if key in keys:
            report.skip(folder, key, None, f"sample key {key!r} is already that of {keys[key]!r}", sample=True)
            continue
        keys[key] = relative
        try:
            out.setdefault(split, []).append(_sample(folder, relative, key, split, depth_folder, staging))
        except Exception as err:  # one unreadable scene folder must not stop the others
            reason = err.reason if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            report.skip(folder, key, None, reason, sample=True)
    return out


def _scene_folders(data: Path) -> Iterator[tuple[str, Path]]:
    """``(path relative to SUNRGBD/, folder)`` of every scene folder, sorted; nothing below one is searched."""
    for current, dirs, files in os.walk(data):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(current)
        if here != data and any(m in dirs or m in files for m in _MARKERS):
            dirs[:] = []
            yield here.relative_to(data).as_posix(), here


def _assign(allsplit: Path, folders: Mapping[str, Path], report: ConversionReport) -> list[tuple[str, str]]:
    """``(relative path, split)`` of the folders to convert: ``allsplit.mat``'s train then test, or all."""
    if not allsplit.is_file():
        report.skip(allsplit, None, None, "missing: no official split, every scene folder written as split 'all' "
                                          "(get it with SUNRGBDtoolbox.zip)")
        return [(relative, "all") for relative in sorted(folders)]
    from scipy.io import loadmat

    try:
        mat = loadmat(allsplit)
        listed = {"train": _strings(mat["alltrain"]), "test": _strings(mat["alltest"])}
    except Exception as err:
        raise InputError(str(allsplit), f"cannot read alltrain / alltest ({type(err).__name__}: {err})") from None
    split_of: dict[str, str] = {}
    for split, paths in listed.items():
        for path in paths:
            relative = _relative(path)
            if relative in split_of:
                if split_of[relative] != split:
                    report.skip(allsplit, None, None, f"{path} is listed in both alltrain and alltest: kept in "
                                                      f"{split_of[relative]}")
                continue
            split_of[relative] = split
            if relative not in folders:
                report.skip(path, None, None, f"listed in {allsplit.name} ({split}) but no such folder under "
                                              f"ROOT/{DATA}", sample=True)
    for relative in sorted(set(folders) - set(split_of)):
        report.skip(folders[relative], None, None, f"not listed in {allsplit.name} (neither alltrain nor alltest)",
                    sample=True)
    return [(relative, split) for split in listed for relative in sorted(folders)
            if split_of.get(relative) == split]


def _strings(value: Any) -> list[str]:
    """The strings of a MATLAB cell array or char matrix as ``scipy.io.loadmat`` returns it."""
    array = np.asarray(value)
    if array.dtype == object:
        return [s for item in array.ravel() for s in _strings(item)]
    if array.dtype.kind == "U":
        return [str(s).strip() for s in array.ravel() if str(s).strip()]
    raise ValueError(f"expected strings, got dtype {array.dtype}")


def _relative(path: str) -> str:
    """``/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001/`` -> ``kv1/NYUdata/NYU0001``."""
    text = path.replace("\\", "/").strip().rstrip("/")
    marker = f"{DATA}/"
    at = text.rfind(marker)
    return text[at + len(marker):] if at >= 0 else text.lstrip("/")


def _only(folder: Path, suffixes: tuple[str, ...], what: str) -> Path:
    if not folder.is_dir():
        raise InputError(str(folder), f"no {folder.name}/ folder")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
    if len(found) != 1:
        raise InputError(str(folder), f"expected one {what} in {folder.name}/, found {len(found)}")
    return found[0]


def _sample(folder: Path, relative: str, key: str, split: str, depth_folder: str, staging: Path) -> SampleRow:
    """Convert one scene folder's depth into ``staging`` and return its row."""
    from PIL import Image

    scene_file = folder / "scene.txt"
    if not scene_file.is_file():
        raise InputError(str(scene_file), "missing: the scene label")
    scene = scene_file.read_text(encoding="utf-8", errors="replace").strip()
    if not scene:
        raise InputError(str(scene_file), "empty scene label")
    image = _only(folder / "image", (".jpg", ".jpeg"), "image (.jpg)")
    depth_file = _only(folder / depth_folder, (".png",), "depth map (.png)")
    try:
        with Image.open(depth_file) as opened:
            opened.load()
            mode, raw = opened.mode, np.asarray(opened)
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(str(depth_file), f"corrupt or truncated PNG ({err})") from None
    if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
        raise InputError(str(depth_file), f"not a 16-bit depth PNG (mode {mode})")
    depth_path = staging / f"{key}.depth.png"
    Image.fromarray(unrotate(raw)).save(depth_path, compress_level=1)
    meta: dict[str, Any] = {
        "attributes": {"category": scene.replace("_", " "), "scene": scene},
        "dataset": {"name": NAME, "split": split, "sensor": relative.split("/", 1)[0], "path": relative,
                    "protocol": dict(PROTOCOL)},
    }
    intrinsics = _intrinsics(folder / "intrinsics.txt")
    if intrinsics is not None:
        meta["intrinsics"] = intrinsics
    return SampleRow(key, members={"image": (str(image), "jpg", None),
                                   "depth": (str(depth_path), "depth.png", None)},
                     meta=meta, origin=str(folder))


def _intrinsics(path: Path) -> list[list[float]] | None:
    """The 3x3 camera matrix of ``intrinsics.txt`` (nine numbers, row by row), or None."""
    try:
        values = [float(v) for v in path.read_text(encoding="utf-8").split()]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if len(values) != 9 or not all(np.isfinite(values)):
        return None
    return [values[0:3], values[3:6], values[6:9]]
