"""Reading audio into a mono float32 waveform at the plugin's sample rate.

soundfile (libsndfile) decodes WAV, FLAC, OGG/Vorbis, MP3 and the other formats it knows,
sniffing the format from the content, so a path and the bytes of a shard member read the same;
torchaudio resamples. Every way an input can be unusable becomes an
:class:`~anchorbind.errors.InputError` naming it, and truncation is looked for explicitly, because
libsndfile decodes the surviving part of a cut WAV or OGG without complaint.

Channels are mixed to mono by averaging. ImageBind instead feeds all channels to kaldi's
fbank, which reads only the first; for mono input the two agree exactly.

Files are read in windows (:func:`read_windows`, what the processor uses): the header gives the
length and rate, the clip sampler picks its clips from them, and only the frames those clips need
(plus the resampler's margin) are decoded, so a file costs the same time and memory whatever its
length. The checks a whole decode would make are made without one: a file's end is decoded to
prove it is there (truncation), and the values checks (NaN, silence, amplitude) apply to the
frames read, which are all the frames the features depend on. :func:`read_waveform` and
:func:`decode_audio` decode whole files, for callers that want the waveform itself.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from anchorbind.errors import InputError
from anchorbind.modalities.audio.features import clip_windows
from anchorbind.plugin import InputSource, read_bytes
from anchorbind.processor import open_input

__all__ = [
    "MAX_ARRAY_CHANNELS",
    "AudioWindows",
    "array_to_channels",
    "decode_audio",
    "read_waveform",
    "read_windows",
    "resampled_length",
]

MODALITY = "audio"
MAX_ARRAY_CHANNELS = 8
"""Arrays with more rows than this are refused: they are far likelier a batch or a transposed
``(samples, channels)`` array than 7.1 audio. Files carry their layout and have no limit."""
MP3_FRAME_TOLERANCE = 0.01
"""MP3 has no exact length field; libsndfile estimates it (exact with a LAME/Xing header), so an
MP3 is called truncated only when it decodes more than 1% short of that estimate."""
_BLOCK_FRAMES = 1 << 16
TAIL_FRAMES = 4096
"""Frames decoded at a file's declared end to prove they are there (a windowed read's truncation check)."""
MIN_RESAMPLE_FRAMES = 1 << 16
"""A windowed read that is resampled spans at least this many frames (or the whole file): see
:func:`_native_range`."""
_UNKNOWN_LENGTH = 2**62
"""libsndfile reports SF_COUNT_MAX frames for a stream whose header does not state its length."""
_RESAMPLE_LOWPASS_WIDTH = 6
_RESAMPLE_ROLLOFF = 0.99
"""``torchaudio.functional.resample``'s defaults, which every resampling here uses."""


def read_waveform(
    source: InputSource,
    sample_rate: int,
    min_duration: float,
    *,
    max_duration: float | None = None,
    max_amplitude: float | None = None,
) -> torch.Tensor:
    """Decode ``source`` whole to a mono float32 waveform ``(samples,)`` at ``sample_rate``.

    The processor reads only its clips' frames (:func:`read_windows`); this reads everything,
    for callers that want the waveform itself.

    Args:
        source: a path, the bytes of an audio file (any rate, any channel count), or a waveform
            array / tensor already at ``sample_rate``, shaped ``(samples,)`` or
            ``(channels, samples)``; float in [-1, 1], or int8/int16/int32/uint8 PCM (scaled as
            soundfile scales those formats).
        sample_rate: the output rate; files at another rate are resampled
            (``torchaudio.functional.resample``, its default windowed-sinc filter, as ImageBind).
        min_duration: shorter inputs are refused, in seconds.
        max_duration: longer inputs are refused, in seconds (files before decoding); ``None``: no limit.
        max_amplitude: inputs with a sample beyond ``±max_amplitude`` are refused; ``None``: no limit.

    Raises:
        InputError: unreadable, empty, undecodable or truncated file; wrong array layout or
            sample type; no samples; NaN or infinite samples; samples beyond ``max_amplitude``;
            silence; shorter than ``min_duration`` or longer than ``max_duration``.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        channels, rate = array_to_channels(source), sample_rate
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        samples, rate = decode_audio(source, max_duration=max_duration)
        channels = torch.from_numpy(samples)
    else:
        raise InputError(source, "expected a path, file bytes or a waveform array", MODALITY)
    wave = _checked_mono(channels, rate, source, min_duration, max_duration=max_duration,
                         max_amplitude=max_amplitude)
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def decode_audio(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, max_duration: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode a whole file (path or bytes) to float32 samples ``(channels, frames)`` and its sample rate.

    Raises:
        InputError: unreadable or empty file, a format libsndfile cannot decode (its message is
            included), a header declaring more than ``max_duration`` seconds (checked before
            decoding), or a truncated file (fewer frames than the header declares, a WAV data
            chunk cut short, an OGG stream without its end).
    """
    data = read_bytes(source, MODALITY)
    handle = _soundfile(io.BytesIO(data), source)
    with handle:
        declared, rate, fmt, log = handle.frames, handle.samplerate, handle.format, handle.extra_info
        _check_declared_length(declared, rate, source, max_duration)
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
    _check_wav_data(io.BytesIO(data), len(data), source)
    _check_ogg_end(fmt, log, source)
    samples = np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=np.float32)
    return np.ascontiguousarray(samples.T), rate


@dataclass(frozen=True)
class AudioWindows:
    """The parts of one input's mono waveform, at the target rate, that its clips need.

    Attributes:
        num_samples: the length of the whole waveform at the target rate (what the sampler saw).
        bounds: the clips the sampler chose, ``[start, end)`` samples of the whole waveform.
        segments: ``(first sample, mono float32 samples)``, one per window of
            :func:`~anchorbind.modalities.audio.features.clip_windows`; they hold exactly the
            samples of the whole waveform at those positions (for
            :func:`~anchorbind.modalities.audio.features.segments_to_clips`).
    """

    num_samples: int
    bounds: list[tuple[int, int]]
    segments: list[tuple[int, torch.Tensor]]


ClipSampler = Callable[[int], list[tuple[int, int]]]
"""Chooses clips ``[start, end)`` given the waveform's length in samples at the target rate."""


def read_windows(
    source: InputSource,
    sample_rate: int,
    sampler: ClipSampler,
    *,
    min_duration: float,
    max_duration: float | None = None,
    max_amplitude: float | None = None,
) -> AudioWindows:
    """Read the clips ``sampler`` chooses from ``source``, decoding no more of a file than they need.

    A file's length and rate come from its header; ``sampler`` gets the length the whole file
    would have at ``sample_rate`` and picks its clips; only the frames under those clips, plus
    the resampler's filter margin, are decoded, mixed to mono and resampled. The result equals
    the same windows of :func:`read_waveform`'s waveform: exactly without resampling; with it,
    exactly in every case tested, and otherwise to float32 rounding (~1e-7: torch may sum the
    resampling convolution in another order for another input length, see :func:`_native_range`).
    An MP3 decoded after a seek may differ from a decode from its start by an ulp (mpg123's state).

    Arrays and tensors (already in memory, at ``sample_rate``) are checked whole, as by
    :func:`read_waveform`.

    Args:
        source: as :func:`read_waveform`.
        sample_rate: the output rate.
        sampler: ``num_samples -> [(start, end), ...]`` (e.g. ``clip_bounds`` with its settings).
        min_duration, max_duration: shorter / longer inputs are refused, in seconds (a file by
            its header, before anything is decoded); ``max_duration=None``: no limit.
        max_amplitude: refuse an input with a sample (of the frames read) beyond
            ``±max_amplitude``; ``None``: no limit.

    Raises:
        InputError: naming ``source``: every reason of :func:`read_waveform`, plus a header that
            does not state the length. NaN, silence and amplitude are judged on the frames read
            (every frame the clips depend on); a file shorter than the clips spread over it is
            read whole.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        channels = array_to_channels(source)
        mono = _checked_mono(channels, sample_rate, source, min_duration, max_duration=max_duration,
                             max_amplitude=max_amplitude)
        return AudioWindows(mono.numel(), sampler(mono.numel()), [(0, mono)])
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise InputError(source, "expected a path, file bytes or a waveform array", MODALITY)
    with open_input(source, MODALITY) as (file, size):
        _check_wav_data(file, size, source)
        file.seek(0)
        with _soundfile(file, source) as handle:
            frames, rate, fmt = handle.frames, handle.samplerate, handle.format
            _check_declared_length(frames, rate, source, max_duration)
            _check_ogg_end(fmt, handle.extra_info, source)
            end = _check_end_decodes(handle, frames, fmt, source)
            if frames == 0:
                raise InputError(source, "empty audio (0 samples)", MODALITY)
            if frames / rate < min_duration:
                raise InputError(source, f"too short: {frames / rate:.3f} s < min_duration {min_duration} s", MODALITY)
            num_samples = resampled_length(frames, rate, sample_rate)
            bounds = sampler(num_samples)
            windows = clip_windows(bounds, num_samples)
            reads = [_native_range(start, stop, rate, sample_rate, frames) for start, stop in windows]
            channels = [_read_frames(handle, first, stop, end, source) for first, stop, _ in reads]
    _check_values(channels, source, max_amplitude)
    monos = [c.mean(0) for c in channels]
    if not any(m.any() for m in monos):
        raise InputError(source, "silent after mixing to mono (the channels cancel out)", MODALITY)
    segments = []
    for (start, stop), (_, _, offset), mono in zip(windows, reads, monos, strict=True):
        if rate != sample_rate:
            wave = AF.resample(mono, rate, sample_rate)
            if wave.numel() < stop - offset:  # the whole file's length rounded up in float32 (> 2**24 samples)
                wave = AF.resample(torch.nn.functional.pad(mono, (0, rate)), rate, sample_rate)
            mono = wave
        segments.append((start, mono[start - offset:stop - offset]))
    return AudioWindows(num_samples, bounds, segments)


def resampled_length(frames: int, rate: int, sample_rate: int) -> int:
    """The length of ``frames`` samples at ``rate`` once resampled to ``sample_rate``, as
    ``torchaudio.functional.resample`` makes it (``ceil(frames * sample_rate / rate)``, in its
    own float32 arithmetic, which rounds above 2**24 samples)."""
    if rate == sample_rate:
        return frames
    gcd = math.gcd(rate, sample_rate)
    orig, new = rate // gcd, sample_rate // gcd
    length = int(torch.ceil(torch.as_tensor(new * frames / orig)))
    return min(length, (frames // orig + 1) * new)  # the convolution's output length bounds it


def _native_range(start: int, end: int, rate: int, sample_rate: int, frames: int) -> tuple[int, int, int]:
    """``(first, stop, offset)``: the frames ``[first, stop)`` at ``rate`` whose resampling gives
    output samples ``[start, end)`` exactly as resampling the whole file does, and the output
    index of the first sample their resampling gives.

    ``torchaudio.functional.resample`` is a strided convolution: output block ``k`` (``new``
    samples) reads input ``[k*orig - width, k*orig + width + orig)``, with zeros beyond the ends.
    Starting the read at a block boundary at least ``width`` before the first block needed
    makes every needed block see the input it sees on the whole file; a block of slack on each
    side keeps that true were torchaudio's filter a little wider. The read is widened to
    :data:`MIN_RESAMPLE_FRAMES` (or the whole file), because torch sums a short convolution in
    another order than a long one (float32 rounding, ~1e-7); from that length on it sums as it
    does for a whole file.
    """
    if rate == sample_rate:
        return start, end, start
    gcd = math.gcd(rate, sample_rate)
    orig, new = rate // gcd, sample_rate // gcd
    width = math.ceil(_RESAMPLE_LOWPASS_WIDTH * orig / (min(orig, new) * _RESAMPLE_ROLLOFF))
    first_block, last_block = start // new, (end - 1) // new
    first = max(0, first_block - math.ceil(width / orig) - 1) * orig
    stop = max((last_block + 2) * orig + width, first + MIN_RESAMPLE_FRAMES)
    if stop > frames:  # the file's end: its zeros are the resampler's own padding
        stop = frames
        first = max(0, min(first, (frames - MIN_RESAMPLE_FRAMES) // orig * orig))
    return first, stop, (first // orig) * new


def _read_frames(handle: sf.SoundFile, first: int, stop: int, end: int, source: InputSource) -> torch.Tensor:
    """Frames ``[first, stop)`` as float32 ``(channels, stop - first)``, zeros from frame ``end`` on
    (where an MP3 that decodes a little short of libsndfile's length estimate really ends)."""
    wanted = min(stop, end) - first
    block = np.zeros((0, handle.channels), dtype=np.float32)
    if wanted > 0:
        try:
            handle.seek(first)
            block = handle.read(wanted, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise InputError(
                source, f"truncated or corrupt: decoding frames {first} to {first + wanted} failed "
                        f"({_libsndfile_message(err)})", MODALITY,
            ) from None
    channels = torch.from_numpy(np.ascontiguousarray(block.T))
    if channels.shape[1] < stop - first:
        channels = torch.nn.functional.pad(channels, (0, stop - first - channels.shape[1]))
    return channels


def _check_values(channels: list[torch.Tensor], source: InputSource, max_amplitude: float | None) -> None:
    """:func:`_checked_mono`'s value checks over the windows read from a file."""
    if not all(torch.isfinite(c).all() for c in channels):
        raise InputError(source, "NaN or infinite samples", MODALITY)
    _check_amplitude(max((float(c.abs().max()) for c in channels if c.numel()), default=0.0), source, max_amplitude)
    if not any(c.any() for c in channels):
        raise InputError(source, "all-zero (silent) audio", MODALITY)


def _check_amplitude(peak: float, source: InputSource, max_amplitude: float | None) -> None:
    if max_amplitude is not None and peak > max_amplitude:
        raise InputError(
            source,
            f"peak amplitude {peak:.3g} exceeds max_amplitude {max_amplitude:g}: float samples must lie in "
            "[-1, 1] (integer PCM stored as float? divide by 32768)",
            MODALITY,
        )


def _check_declared_length(frames: int, rate: int, source: InputSource, max_duration: float | None) -> None:
    if frames >= _UNKNOWN_LENGTH:
        raise InputError(source, "the header does not state the length (a stream written to a pipe?); "
                                 "re-encode the file", MODALITY)
    if max_duration is not None and frames / rate > max_duration:
        raise InputError(source, f"too long: {frames / rate:.1f} s > max_duration {max_duration:g} s "
                                 "(cut it into shorter files, or raise max_duration)", MODALITY)


def _check_end_decodes(handle: sf.SoundFile, declared: int, fmt: str, source: InputSource) -> int:
    """Decode the last :data:`TAIL_FRAMES` frames the header declares (MP3: and the last 1%):
    a file cut short fails to seek there or ends early. Returns where the file really ends (at
    most ``declared``: an MP3's length is libsndfile's estimate, within 1%)."""
    allowed = math.floor(MP3_FRAME_TOLERANCE * declared) if fmt == "MP3" else 0
    first = max(declared - allowed - TAIL_FRAMES, 0)
    decoded = first
    try:
        handle.seek(first)
        while True:
            block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if not len(block):
                break
            decoded += len(block)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise InputError(
            source,
            f"truncated or corrupt: decoding failed between frame {first} and the {declared} the header declares "
            f"({_libsndfile_message(err)})",
            MODALITY,
        ) from None
    if declared - decoded > allowed:
        raise InputError(source, f"truncated: the header declares {declared} frames, {decoded} decoded", MODALITY)
    return min(decoded, declared)


def _check_wav_data(file: BinaryIO, size: int, source: InputSource) -> None:
    cut = _wav_data_shortfall(file, size)
    if cut is not None:
        raise InputError(source, f"truncated: the WAV data chunk declares {cut[0]} bytes, the file holds {cut[1]}",
                         MODALITY)


def _check_ogg_end(fmt: str, log: str, source: InputSource) -> None:
    if fmt == "OGG" and "lacks an end-of-stream" in log:
        raise InputError(source, "truncated: the OGG stream ends without its end-of-stream page", MODALITY)


def _soundfile(file: BinaryIO, source: InputSource) -> sf.SoundFile:
    try:
        return sf.SoundFile(file)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise InputError(source, f"not decodable audio ({_libsndfile_message(err)})", MODALITY) from None


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


def _checked_mono(
    channels: torch.Tensor,
    rate: int,
    source: InputSource,
    min_duration: float,
    *,
    max_duration: float | None = None,
    max_amplitude: float | None = None,
) -> torch.Tensor:
    """Refuse unusable audio, then average the channels."""
    if channels.numel() == 0:
        raise InputError(source, "empty audio (0 samples)", MODALITY)
    if not torch.isfinite(channels).all():
        raise InputError(source, "NaN or infinite samples", MODALITY)
    _check_amplitude(float(channels.abs().max()), source, max_amplitude)
    if not channels.any():
        raise InputError(source, "all-zero (silent) audio", MODALITY)
    seconds = channels.shape[1] / rate
    if seconds < min_duration:
        raise InputError(source, f"too short: {seconds:.3f} s < min_duration {min_duration} s", MODALITY)
    if max_duration is not None and seconds > max_duration:
        raise InputError(source, f"too long: {seconds:.1f} s > max_duration {max_duration:g} s "
                                 "(cut it into shorter pieces, or raise max_duration)", MODALITY)
    mono = channels.mean(0)
    if not mono.any():
        raise InputError(source, "silent after mixing to mono (the channels cancel out)", MODALITY)
    return mono


def _wav_data_shortfall(file: BinaryIO, length: int) -> tuple[int, int] | None:
    """``(declared, held)`` bytes of a RIFF/WAVE data chunk missing at least one whole frame, else None.

    ``file`` holds ``length`` bytes; only the chunk headers before the data chunk are read.
    libsndfile shortens a cut WAV's frame count to what the file holds, so the cut is visible
    only in the header. A declared size of 0 or 0xFFFFFFFF marks a stream written without a
    known length and is not a truncation.
    """
    def read(position: int, count: int) -> bytes:
        file.seek(position)
        return file.read(count)

    head = read(0, 12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order = "<" if head[:4] == b"RIFF" else ">"
    block_align, position = 1, 12
    while position + 8 <= length:
        header = read(position, 8)
        chunk, size = header[:4], struct.unpack(order + "I", header[4:8])[0]
        body = position + 8
        if chunk == b"fmt " and size >= 14 and body + 14 <= length:
            block_align = max(struct.unpack(order + "H", read(body + 12, 2))[0], 1)
        elif chunk == b"data":
            held = length - body
            if size in (0, 0xFFFFFFFF) or (size - held) < block_align:
                return None
            return size, held
        position = body + size + (size & 1)
    return None


def _libsndfile_message(err: Exception) -> str:
    """libsndfile's own words (e.g. "Format not recognised"), without soundfile's 'Error opening <obj>'."""
    message = getattr(err, "error_string", None) or str(err)
    return " ".join(str(message).split())
