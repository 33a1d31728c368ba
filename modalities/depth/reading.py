"""Read a depth map from any accepted source into metres, refusing what cannot be metric depth.

Accepted: a path or the bytes of a ``.npy`` (float, metres; never unpickled) or of a 16-bit PNG
(``png_scale`` units per metre, NYU/SUN RGB-D millimetres), or a float ``np.ndarray`` /
``torch.Tensor`` in metres shaped ``HxW``, ``1xHxW`` or ``HxWx1``. The file type is sniffed from
the content, not the name, so WebDataset samples (bytes) and misnamed files read the same way.

A depth of 0 means "no measurement" (the NYU/SUN RGB-D convention for both PNG and arrays). Such
pixels are reported in the ``invalid`` mask for the caller to fill; NaN, infinity and negative
depths are not a convention anyone uses and are refused.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from anchorbind.errors import InputError
from anchorbind.plugin import read_bytes

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
    source: Any, *, png_scale: float = 1000.0, allow_8bit_png: bool = False, max_invalid_fraction: float = 1.0
) -> DepthReading:
    """Read one depth map into metres.

    Args:
        source: a path or bytes of a ``.npy``/PNG file, or an array/tensor in metres.
        png_scale: PNG units per metre (1000: millimetres).
        allow_8bit_png: accept 8-bit PNGs instead of refusing them.
        max_invalid_fraction: refuse maps with a larger fraction of zero (unmeasured) pixels.

    Returns:
        The depth in metres and its invalid-pixel mask.

    Raises:
        InputError: naming ``source`` and the reason: unreadable, neither ``.npy`` nor PNG, a
            pickled/object ``.npy``, an 8-bit or colour PNG, a non-float array, a shape other
            than one channel, NaN/inf or negative values, too many invalid pixels.
    """
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()  # numpy has no bfloat16
    elif isinstance(source, np.ndarray):
        array = source
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        array = _decode(source, read_bytes(source, MODALITY), png_scale, allow_8bit_png)
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


def _decode(source: Any, data: bytes, png_scale: float, allow_8bit_png: bool) -> np.ndarray:
    if data.startswith(NPY_MAGIC):
        return _decode_npy(source, data)
    if data.startswith(PNG_MAGIC):
        return _decode_png(source, data, allow_8bit_png) / np.float32(png_scale)
    raise InputError(source, "not a .npy file or a PNG image (unrecognised content)", MODALITY)


def _decode_npy(source: Any, data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
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


def _decode_png(source: Any, data: bytes, allow_8bit_png: bool) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, bands = image.mode, len(image.getbands())
            array = np.asarray(image)
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
    metres = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(metres)
    if not finite.all():
        nan = int(np.isnan(metres).sum())
        inf = int((~finite).sum()) - nan
        raise InputError(source, f"depth has {nan} NaN and {inf} infinite value(s)", MODALITY)
    negative = int((metres < 0).sum())
    if negative:
        raise InputError(
            source, f"depth has {negative} negative value(s) (min {float(metres.min()):.3g} m)", MODALITY
        )
    return metres
