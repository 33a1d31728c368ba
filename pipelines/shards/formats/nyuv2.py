"""NYU Depth v2, labeled set (Silberman et al., ECCV 2012), for ``anchorbind shards ROOT --format nyuv2``.

Layout, as distributed (cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html)::

    ROOT/nyu_depth_v2_labeled.mat   # MATLAB v7.3 (HDF5): images, depths, sceneTypes, ...
    ROOT/splits.mat                 # MATLAB v5: trainNdxs (795), testNdxs (654), 1-based

In h5py the MATLAB arrays come out transposed: ``images`` is ``(N, 3, 640, 480)`` uint8 for
480x640 RGB images, ``depths`` ``(N, 640, 480)`` float metres (the in-painted maps), and
``sceneTypes`` a ``(1, N)`` array of object references, each to a ``(len, 1)`` uint16 array of
character codes (a MATLAB cell array of strings). Samples are read one at a time (never the
whole array), so memory stays at one image whatever the file's 2.8 GB.

Per sample (key: the 1-based index in the .mat, ``0001``...): ``png`` (the RGB image),
``depth.npy`` (float32 metres) and ``json``::

    {"attributes": {"category": "living room", "scene": "living_room"},
     "dataset": {"name": "nyuv2", "split": "train" | "test", "index": 1,
                 "protocol": {"task": "zero_shot", "modality": "depth", "label": "category",
                              "classes": [the 10 classes], "split": "test"}}}

Splits: ``trainNdxs`` -> ``train``, ``testNdxs`` -> ``test`` (795 / 654). Without ``splits.mat``
every image is written as split ``all`` and the missing file is reported.

Classes: ImageBind (after Omnivore) evaluates zero-shot scene classification from depth on the
654 test images with 10 classes: nine scene types and ``others`` for every other one
(facebookresearch/ImageBind issues #88 and #107). ``attributes.category`` is that class, with
spaces for underscores; ``attributes.scene`` keeps the original scene type.

Staging: the images and depth maps are arrays inside the .mat, while a
:class:`~anchorbind.pipelines.shards.convert.SampleRow` names files, so :func:`read` writes one
``.png`` and one ``.depth.npy`` per sample into a fresh folder ``anchorbind-nyuv2-*`` under the
system temporary folder (or under ``--option work_dir=DIR``; about 3 GB for the 1449 images),
which is removed when the process exits (``atexit``: the CLI exits once the shards are written).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from anchorbind.errors import InputError
from anchorbind.pipelines.shards.convert import ConversionReport, SampleRow
from anchorbind.pipelines.shards.formats.common import check_options

__all__ = ["CLASSES", "DESCRIPTION", "NAME", "category", "read", "staging_dir"]

NAME = "nyuv2"
DESCRIPTION = "NYU Depth v2 labeled set (nyu_depth_v2_labeled.mat + splits.mat): RGB + depth, 10 scene classes"
LABELED = "nyu_depth_v2_labeled.mat"
SPLITS = "splits.mat"
CLASSES: tuple[str, ...] = ("bathroom", "bedroom", "bookstore", "classroom", "dining room", "home office",
                            "kitchen", "living room", "office", "others")
"""The evaluated classes (ImageBind issues #88, #107): every other scene type is ``others``."""
OTHERS = "others"
OPTIONS = ("work_dir",)
PROTOCOL: dict[str, Any] = {"task": "zero_shot", "modality": "depth", "label": "category",
                            "classes": list(CLASSES), "split": "test"}

logger = logging.getLogger(__name__)


def category(scene: str) -> str:
    """The evaluated class of NYU scene type ``scene`` (``living_room`` -> ``living room``; ``cafe`` -> ``others``)."""
    name = scene.strip().replace("_", " ")
    return name if name in CLASSES else OTHERS


def staging_dir(name: str, options: Mapping[str, str]) -> Path:
    """A fresh folder for a reader's converted files, removed when the process exits.

    Under ``options["work_dir"]`` when given (created if needed), else the system temporary folder.
    """
    parent = options.get("work_dir") or None
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"anchorbind-{name}-", dir=parent))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    logger.info("%s: converted files staged in %s (removed at exit)", name, path)
    return path


def read(root: Path, report: ConversionReport, options: Mapping[str, str]) -> dict[str, list[SampleRow]]:
    """The labeled set's samples per official split (``all`` without ``splits.mat``).

    Raises:
        ConfigError: an ``--option`` other than ``work_dir``.
        InputError: ``nyu_depth_v2_labeled.mat`` is missing, is not a MATLAB v7.3 (HDF5) file, or
            lacks the ``images`` / ``depths`` / ``sceneTypes`` arrays or their expected shapes.
    """
    import h5py

    check_options(NAME, options, OPTIONS)
    mat = root / LABELED
    if not mat.is_file():
        raise InputError(str(mat), f"missing: --format {NAME} needs the labeled set's {LABELED} in the root folder")
    try:
        handle = h5py.File(mat, "r")
    except OSError as err:
        raise InputError(str(mat), f"not a MATLAB v7.3 (HDF5) file ({err})") from None
    with handle:
        images, depths, refs = _arrays(handle, mat)
        count = images.shape[0]
        splits = _splits(root / SPLITS, count, report)
        staging = staging_dir(NAME, options)
        width = max(4, len(str(count)))
        out: dict[str, list[SampleRow]] = {}
        for split, indices in splits.items():
            rows = out.setdefault(split, [])
            for index in indices:
                key = f"{index:0{width}d}"
                try:
                    rows.append(_sample(handle, images, depths, refs, index, key, split, staging))
                except Exception as err:  # one unreadable entry must not stop the others
                    reason = err.reason if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
                    report.skip(f"{mat}[{index}]", key, None, reason, sample=True)
    return out


def _arrays(handle: Any, mat: Path) -> tuple[Any, Any, np.ndarray]:
    """``images``, ``depths`` (h5py datasets, read lazily) and the ``sceneTypes`` references, checked."""
    missing = [name for name in ("images", "depths", "sceneTypes") if name not in handle]
    if missing:
        raise InputError(str(mat), f"no {', '.join(missing)} array in the file (not NYU Depth v2's labeled set?)")
    images, depths = handle["images"], handle["depths"]
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(str(mat), f"images has shape {images.shape}, expected (N, 3, W, H) as MATLAB stores them")
    if depths.shape != (images.shape[0], *images.shape[2:]):
        raise InputError(str(mat), f"depths has shape {depths.shape}, expected {(images.shape[0], *images.shape[2:])} "
                                   f"to match images {images.shape}")
    refs = np.asarray(handle["sceneTypes"][()]).ravel()
    if refs.size != images.shape[0]:
        raise InputError(str(mat), f"sceneTypes has {refs.size} entries for {images.shape[0]} images")
    return images, depths, refs


def _splits(path: Path, count: int, report: ConversionReport) -> dict[str, list[int]]:
    """``{"train": [...], "test": [...]}`` of 1-based indices from ``splits.mat`` (``{"all": ...}`` without it)."""
    if not path.is_file():
        report.skip(path, None, None, f"missing: no official split, every image written as split 'all' "
                                      f"(get {SPLITS} with the labeled set)")
        return {"all": list(range(1, count + 1))}
    from scipy.io import loadmat

    try:
        data = loadmat(path)
        listed = {"train": data["trainNdxs"], "test": data["testNdxs"]}
    except Exception as err:
        raise InputError(str(path), f"cannot read trainNdxs / testNdxs ({type(err).__name__}: {err})") from None
    splits: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for split, values in listed.items():
        kept = []
        for value in np.asarray(values).ravel().tolist():
            index = int(value)
            if index != value or not 1 <= index <= count:
                shown = index if index == value else value
                report.skip(path, None, None, f"{split} index {shown} is not in 1..{count}", sample=True)
            elif index in seen:
                report.skip(path, f"{index}", None, f"{split} index {index} is already in {seen[index]}",
                            sample=True)
            else:
                seen[index] = split
                kept.append(index)
        splits[split] = sorted(kept)
    return splits


def _sample(handle: Any, images: Any, depths: Any, refs: np.ndarray, index: int, key: str, split: str,
            staging: Path) -> SampleRow:
    """Write sample ``index`` (1-based) into ``staging`` and return its row."""
    from PIL import Image

    scene = _string(handle[refs[index - 1]][()])
    if not scene:
        raise InputError(f"sceneTypes[{index}]", "empty scene type")
    rgb = np.ascontiguousarray(np.asarray(images[index - 1]).transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
    if rgb.dtype != np.uint8:
        raise InputError(f"images[{index}]", f"dtype {rgb.dtype}, expected uint8")
    depth = np.ascontiguousarray(np.asarray(depths[index - 1], dtype=np.float32).T)  # (W, H) -> (H, W)
    image_path, depth_path = staging / f"{key}.png", staging / f"{key}.depth.npy"
    Image.fromarray(rgb, "RGB").save(image_path, compress_level=1)
    np.save(depth_path, depth)
    meta = {"attributes": {"category": category(scene), "scene": scene},
            "dataset": {"name": NAME, "split": split, "index": index, "protocol": dict(PROTOCOL)}}
    return SampleRow(key, members={"image": (str(image_path), "png", None),
                                   "depth": (str(depth_path), "depth.npy", None)},
                     meta=meta, origin=f"{LABELED}[{index}]")


def _string(codes: Any) -> str:
    """A MATLAB char array (uint16 codes, any shape) as a ``str``."""
    array = np.asarray(codes)
    if array.dtype.kind not in "ui":
        raise InputError("sceneTypes", f"expected MATLAB char codes, got dtype {array.dtype}")
    return "".join(chr(int(c)) for c in array.ravel() if c).strip()
