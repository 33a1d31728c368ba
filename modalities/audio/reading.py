"""Reading audio into a mono float32 waveform at the plugin's sample rate.

soundfile (libsndfile) decodes WAV, FLAC, OGG/Vorbis, MP3 and the other formats it knows,
sniffing the format from the content, so a path and the bytes of a shard member read the same;
torchaudio resamples. Every way an input can be unusable becomes an
:class:`~anchorbind.errors.InputError` naming it, and truncation is looked for explicitly, because
libsndfile decodes the surviving part of a cut WAV or OGG without complaint.

Channels are mixed to mono by averaging. ImageBind instead feeds all channels to kaldi's
fbank, which reads only the first; for mono input the two agree exactly.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from anchorbind.errors import InputError
from anchorbind.plugin import InputSource, read_bytes

__all__ = ["MAX_ARRAY_CHANNELS", "array_to_channels", "decode_audio", "read_waveform"]

MODALITY = "audio"
MAX_ARRAY_CHANNELS = 8
"""Arrays with more rows than this are refused: they are far likelier a batch or a transposed
``(samples, channels)`` array than 7.1 audio. Files carry their layout and have no limit."""
MP3_FRAME_TOLERANCE = 0.01
"""MP3 has no exact length field; libsndfile estimates it (exact with a LAME/Xing header), so an
MP3 is called truncated only when it decodes more than 1% short of that estimate."""
_BLOCK_FRAMES = 1 << 16


def read_waveform(source: InputSource, sample_rate: int, min_duration: float) -> torch.Tensor:
    """Decode ``source`` to a mono float32 waveform ``(samples,)`` at ``sample_rate``.

    Args:
        source: a path, the bytes of an audio file (any rate, any channel count), or a waveform
            array / tensor already at ``sample_rate``, shaped ``(samples,)`` or
            ``(channels, samples)``; float in [-1, 1], or int8/int16/int32/uint8 PCM (scaled as
            soundfile scales those formats).
        sample_rate: the output rate; files at another rate are resampled
            (``torchaudio.functional.resample``, its default windowed-sinc filter, as ImageBind).
        min_duration: shorter inputs are refused, in seconds.

    Raises:
        InputError: unreadable, empty, undecodable or truncated file; wrong array layout or
            sample type; no samples; NaN or infinite samples; silence; shorter than ``min_duration``.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        channels, rate = array_to_channels(source), sample_rate
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        samples, rate = decode_audio(source)
        channels = torch.from_numpy(samples)
    else:
        raise InputError(source, "expected a path, file bytes or a waveform array", MODALITY)
    wave = _checked_mono(channels, rate, source, min_duration)
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def decode_audio(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> tuple[np.ndarray, int]:
    """Decode a file (path or bytes) to float32 samples ``(channels, frames)`` and its sample rate.

    Raises:
        InputError: unreadable or empty file, a format libsndfile cannot decode (its message is
            included), or a truncated file (fewer frames than the header declares, a WAV data
            chunk cut short, an OGG stream without its end).
    """
    data = read_bytes(source, MODALITY)
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise InputError(source, f"not decodable audio ({_libsndfile_message(err)})", MODALITY) from None
    with handle:
        declared, rate, fmt, log = handle.frames, handle.samplerate, handle.format, handle.extra_info
        blocks: list[np.ndarray] = []
        decoded = 0
        try:
            while True:
                block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block)
                decoded += len(block)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise InputError(
                source,
                f"truncated or corrupt: decoding failed after {decoded} of {declared} frames "
                f"({_libsndfile_message(err)})",
                MODALITY,
            ) from None
        channels = handle.channels
    shortfall = declared - decoded
    if shortfall > (MP3_FRAME_TOLERANCE * declared if fmt == "MP3" else 0):
        raise InputError(source, f"truncated: the header declares {declared} frames, {decoded} decoded", MODALITY)
    cut = _wav_data_shortfall(data)
    if cut is not None:
        raise InputError(source, f"truncated: the WAV data chunk declares {cut[0]} bytes, the file holds {cut[1]}",
                         MODALITY)
    if fmt == "OGG" and "lacks an end-of-stream" in log:
        raise InputError(source, "truncated: the OGG stream ends without its end-of-stream page", MODALITY)
    samples = np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=np.float32)
    return np.ascontiguousarray(samples.T), rate


def array_to_channels(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A waveform array to float32 ``(channels, samples)``, refusing layouts that cannot be told apart.

    ``(samples,)`` is mono; ``(channels, samples)`` needs ``channels < samples`` and at most
    :data:`MAX_ARRAY_CHANNELS` rows, so that a ``(samples, channels)`` array is refused rather
    than read as thousands of one-sample channels.

    Raises:
        InputError: a sample type that is not float or int8/16/32/uint8 PCM, or the wrong layout.
    """
    source = array
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    samples = _as_float_samples(np.asarray(array), source)
    if samples.ndim == 1:
        samples = samples[None]
    if samples.size == 0:
        raise InputError(source, "empty audio (0 samples)", MODALITY)
    rows = samples.shape[0] if samples.ndim == 2 else 0
    if samples.ndim != 2 or rows > MAX_ARRAY_CHANNELS or (rows > 1 and rows >= samples.shape[1]):
        raise InputError(
            source,
            f"wrong channel layout {tuple(samples.shape)}: expected (samples,) or (channels, samples) "
            f"with fewer channels than samples and at most {MAX_ARRAY_CHANNELS} channels "
            "(transpose a (samples, channels) array)",
            MODALITY,
        )
    return torch.from_numpy(np.ascontiguousarray(samples))


def _as_float_samples(array: np.ndarray, source: InputSource) -> np.ndarray:
    """Float arrays as they are; integer PCM scaled to [-1, 1) as soundfile reads those formats."""
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "f":
        return array.astype(np.float32)
    if kind == "i" and size <= 4:
        return (array / float(2 ** (8 * size - 1))).astype(np.float32)
    if kind == "u" and size == 1:
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise InputError(
        source,
        f"unsupported sample type {array.dtype}: pass float samples in [-1, 1] or int8/int16/int32/uint8 PCM",
        MODALITY,
    )


def _checked_mono(channels: torch.Tensor, rate: int, source: InputSource, min_duration: float) -> torch.Tensor:
    """Refuse unusable audio, then average the channels."""
    if channels.numel() == 0:
        raise InputError(source, "empty audio (0 samples)", MODALITY)
    if not torch.isfinite(channels).all():
        raise InputError(source, "NaN or infinite samples", MODALITY)
    if not channels.any():
        raise InputError(source, "all-zero (silent) audio", MODALITY)
    seconds = channels.shape[1] / rate
    if seconds < min_duration:
        raise InputError(source, f"too short: {seconds:.3f} s < min_duration {min_duration} s", MODALITY)
    mono = channels.mean(0)
    if not mono.any():
        raise InputError(source, "silent after mixing to mono (the channels cancel out)", MODALITY)
    return mono


def _wav_data_shortfall(data: bytes) -> tuple[int, int] | None:
    """``(declared, held)`` bytes of a RIFF/WAVE data chunk missing at least one whole frame, else None.

    libsndfile shortens a cut WAV's frame count to what the file holds, so the cut is visible
    only in the header. A declared size of 0 or 0xFFFFFFFF marks a stream written without a
    known length and is not a truncation.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        return None
    order = "<" if data[:4] == b"RIFF" else ">"
    block_align, position = 1, 12
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], struct.unpack(order + "I", data[position + 4:position + 8])[0]
        body = position + 8
        if chunk == b"fmt " and size >= 14 and body + 14 <= len(data):
            block_align = max(struct.unpack(order + "H", data[body + 12:body + 14])[0], 1)
        elif chunk == b"data":
            held = len(data) - body
            if size in (0, 0xFFFFFFFF) or (size - held) < block_align:
                return None
            return size, held
        position = body + size + (size & 1)
    return None


def _libsndfile_message(err: Exception) -> str:
    """libsndfile's own words (e.g. "Format not recognised"), without soundfile's 'Error opening <obj>'."""
    message = getattr(err, "error_string", None) or str(err)
    return " ".join(str(message).split())
