"""Read a depth map from any accepted source into metres, refusing what cannot be metric depth.

Accepted: a path or the bytes of a ``.npy`` (float, metres; never unpickled) or of a 16-bit PNG
(``png_scale`` units per metre, NYU/SUN RGB-D millimetres), or a float ``np.ndarray`` /
``torch.Tensor`` in metres shaped ``HxW``, ``1xHxW`` or ``HxWx1``. The file type is sniffed from
the content, not the name, so WebDataset samples (bytes) and misnamed files read the same way.

A depth of 0 means "no measurement" (the NYU/SUN RGB-D convention for both PNG and arrays). Such
pixels are reported in the ``invalid`` mask for the caller to fill; NaN, infinity and negative
depths are not a convention anyone uses and are refused. Every other finite value is kept as
metres (values beyond float32's range, possible in a float64 array, become its largest value)
and clipped to ``[min_depth, max_depth]`` by the processor, so 1e30 m reads as ``max_depth``
and 1e-30 m as ``min_depth`` whatever the source's dtype.

Size: a map with more than ``max_pixels`` values is refused before it is decoded: a PNG's size
and a ``.npy``'s shape come from their headers, and a path is opened, not read into memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from anchorbind.errors import InputError
from anchorbind.processor import open_input

__all__ = ["NPY_MAGIC", "PNG_MAGIC", "DepthReading", "read_depth"]

NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODALITY = "depth"
_PNG_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class DepthReading:
    """A depth map in metres and where it has no measurement.

    Attributes:
        metres: ``(H, W)`` float32 depth; invalid pixels hold 0.
        invalid: ``(H, W)`` bool, True where the source had no measurement (depth 0).
    """

    metres: np.ndarray
    invalid: np.ndarray

    @property
    def invalid_fraction(self) -> float:
        return float(self.invalid.mean())


def read_depth(
    source: Any,
    *,
    png_scale: float = 1000.0,
    allow_8bit_png: bool = False,
    max_invalid_fraction: float = 1.0,
    max_pixels: int | None = None,
) -> DepthReading:
    """Read one depth map into metres.

    Args:
        source: a path or bytes of a ``.npy``/PNG file, or an array/tensor in metres.
        png_scale: PNG units per metre (1000: millimetres).
        allow_8bit_png: accept 8-bit PNGs instead of refusing them.
        max_invalid_fraction: refuse maps with a larger fraction of zero (unmeasured) pixels.
        max_pixels: refuse maps with more values than this (``None``: no limit), files from
            their header, before decoding.

    Returns:
        The depth in metres and its invalid-pixel mask.

    Raises:
        InputError: naming ``source`` and the reason: unreadable, neither ``.npy`` nor PNG, a
            pickled/object ``.npy``, an 8-bit or colour PNG, a non-float array, a shape other
            than one channel, NaN/inf or negative values, too many invalid pixels, more than
            ``max_pixels`` values.
    """
    if isinstance(source, torch.Tensor):
        _check_size(source.numel(), tuple(source.shape), max_pixels, source)
        tensor = source.detach().cpu()
        array = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # numpy has no bfloat16
    elif isinstance(source, np.ndarray):
        _check_size(source.size, source.shape, max_pixels, source)
        array = source
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        with open_input(source, MODALITY) as (file, _):
            array = _decode(source, file, png_scale, allow_8bit_png, max_pixels)
    else:
        raise InputError(source, "expected a path, bytes, np.ndarray or torch.Tensor of depth", MODALITY)
    metres = _check_array(source, array)
    invalid = metres == 0
    fraction = float(invalid.mean())
    if fraction > max_invalid_fraction:
        raise InputError(
            source,
            f"{fraction:.1%} of pixels have no measurement (depth 0), more than "
            f"max_invalid_fraction={max_invalid_fraction:g}",
            MODALITY,
        )
    return DepthReading(metres=metres, invalid=invalid)


def _check_size(count: int, shape: tuple[int, ...], max_pixels: int | None, source: Any) -> None:
    if max_pixels is not None and count > max_pixels:
        raise InputError(source, f"depth map too large: shape {tuple(shape)} holds {count} values > max_pixels "
                                 f"{max_pixels}", MODALITY)


def _decode(source: Any, file: BinaryIO, png_scale: float, allow_8bit_png: bool, max_pixels: int | None) -> np.ndarray:
    head = file.read(len(PNG_MAGIC))
    file.seek(0)
    if head.startswith(NPY_MAGIC):
        return _decode_npy(source, file, max_pixels)
    if head.startswith(PNG_MAGIC):
        return _decode_png(source, file, allow_8bit_png, max_pixels) / np.float32(png_scale)
    raise InputError(source, "not a .npy file or a PNG image (unrecognised content)", MODALITY)


def _npy_shape(source: Any, file: BinaryIO) -> tuple[int, ...]:
    """The shape a ``.npy`` header declares (the file is left where it was)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(file)
        if version == (1, 0):
            shape = fmt.read_array_header_1_0(file)[0]
        elif version == (2, 0):
            shape = fmt.read_array_header_2_0(file)[0]
        else:  # 3.0 (utf-8 field names) has no public reader
            shape = fmt._read_array_header(file, version)[0]
    except (ValueError, OSError, EOFError, AttributeError, TypeError) as err:
        raise InputError(source, f"corrupt .npy file ({err})", MODALITY) from None
    finally:
        file.seek(0)
    return tuple(shape)


def _decode_npy(source: Any, file: BinaryIO, max_pixels: int | None) -> np.ndarray:
    shape = _npy_shape(source, file)
    _check_size(int(np.prod(shape, dtype=np.int64)) if shape else 1, shape, max_pixels, source)
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(
                source, "the .npy holds Python objects (pickled); refused: depth must be a float array",
                MODALITY,
            ) from None
        raise InputError(source, f"corrupt .npy file ({err})", MODALITY) from None
    except (OSError, EOFError) as err:
        raise InputError(source, f"corrupt .npy file ({err})", MODALITY) from None
    if not isinstance(array, np.ndarray):
        raise InputError(source, f"the .npy holds {type(array).__name__}, not an array", MODALITY)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            source,
            f".npy of dtype {array.dtype}: depth .npy files must be float metres "
            "(store integer millimetres as a 16-bit PNG instead)",
            MODALITY,
        )
    return array


def _decode_png(source: Any, file: BinaryIO, allow_8bit_png: bool, max_pixels: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # max_pixels is the limit: Pillow's DecompressionBombWarning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(file)
        with opened as image:
            width, height = image.size
            _check_size(width * height, (height, width), max_pixels, source)
            image.load()
            mode, bands = image.mode, len(image.getbands())
            array = np.asarray(image)
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(source, f"depth map too large: Pillow refuses it as a decompression bomb ({err})",
                         MODALITY) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise InputError(source, f"corrupt or truncated PNG ({err})", MODALITY) from None
    if mode in _PNG_16BIT_MODES:
        return array.astype(np.float32)
    if mode == "L":
        if not allow_8bit_png:
            raise InputError(
                source,
                "8-bit PNG: metric depth needs a 16-bit PNG (8 bits lose the metric scale); "
                "set allow_8bit_png=true if this map really is depth in 1/png_scale metres",
                MODALITY,
            )
        return array.astype(np.float32)
    raise InputError(
        source,
        f"PNG of mode {mode!r} ({bands} channel(s)); depth must be a "
        "single-channel 16-bit PNG",
        MODALITY,
    )


def _check_array(source: Any, array: np.ndarray) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            source,
            f"array of dtype {array.dtype}: depth arrays must be float metres (divide integer "
            "millimetres by 1000)",
            MODALITY,
        )
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2:
        hint = " (a colour image? depth has one channel)" if array.ndim == 3 and array.shape[-1] in (3, 4) else ""
        raise InputError(
            source, f"expected a depth map shaped HxW or 1xHxW, got shape {tuple(array.shape)}{hint}", MODALITY
        )
    if array.size == 0:
        raise InputError(source, f"empty depth map of shape {tuple(array.shape)}", MODALITY)
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        inf = int((~finite).sum()) - nan
        raise InputError(source, f"depth has {nan} NaN and {inf} infinite value(s)", MODALITY)
    negative = int((array < 0).sum())
    if negative:
        raise InputError(
            source, f"depth has {negative} negative value(s) (min {float(array.min()):.3g} m)", MODALITY
        )
    if array.dtype.itemsize <= 4:  # float16/32: every value fits float32 as it is
        return np.asarray(array, dtype=np.float32)
    # float64 and wider: finite values beyond float32's range must not become inf (refused as
    # "infinite") nor tiny ones 0 (read as "no measurement"); clipping keeps them what they are
    # to the processor, which clips depth to [min_depth, max_depth] anyway (module docstring)
    limits = np.finfo(np.float32)
    measured = array != 0
    metres = np.clip(array, 0, limits.max).astype(np.float32)
    metres[measured & (metres < limits.tiny)] = limits.tiny  # subnormals too: flushed to zero under FTZ/DAZ
    return metres
