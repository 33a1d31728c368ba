"""Synthesising a scene's sound: timbre from the category, pitch from the size, and rhythm,
tempo and loudness that only the sound carries.

The clip is the main object "played" ``beats`` times: each beat is one note of the category's
instrument. Instruments differ in harmonic recipe, inharmonicity, modulation and envelope (what a
spectrogram shows), so the category is audible; ``size`` sets the fundamental (large = low), which
vision sees as size — a shared attribute. ``beats`` (number of notes), ``tempo`` (their spacing)
and ``loudness`` (their level) have no visual counterpart: they are the non-visual attributes the
visiocentrism analysis looks for. Coloured background noise of jittered level and a faint mains
hum are nuisances that carry nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.signal import lfilter

from anchorbind.pipelines.world.config import WorldConfig
from anchorbind.pipelines.world.scene import Scene

__all__ = ["AMPLITUDE", "BEAT_SPACING", "FUNDAMENTAL", "INSTRUMENTS", "synthesise"]

FUNDAMENTAL = {"small": 523.25, "medium": 261.63, "large": 130.81}  # C5, C4, C3
"""Note frequency (Hz) per size: bigger objects sound lower."""
BEAT_SPACING = {"slow": 0.7, "fast": 0.32}
"""Seconds between note onsets per tempo."""
AMPLITUDE = {"quiet": 0.15, "loud": 0.6}
"""Peak level of each note per loudness."""
NOTE_SECONDS = 0.6
"""Longest note; a note also ends at 75% of the beat spacing, so a gap separates every two beats."""


def _partials(t: np.ndarray, f0: float, ratios: list[float], weights: list[float]) -> np.ndarray:
    return sum(w * np.sin(2 * np.pi * f0 * r * t) for r, w in zip(ratios, weights, strict=True))


def _harmonics(t: np.ndarray, f0: float, weights: list[float]) -> np.ndarray:
    return _partials(t, f0, [k + 1.0 for k in range(len(weights))], weights)


def _sine(t, f0, rng):  # sphere: pure tone, soft attack
    return np.sin(2 * np.pi * f0 * t) * np.minimum(t / 0.03, 1) * np.exp(-t / 0.25)


def _square(t, f0, rng):  # cube: odd harmonics, hollow
    return _harmonics(t, f0, [1, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7]) * np.exp(-t / 0.18)


def _saw(t, f0, rng):  # cylinder: all harmonics, bright and sustained
    return _harmonics(t, f0, [1 / k for k in range(1, 9)]) * np.exp(-t / 0.3)


def _fm_bell(t, f0, rng):  # cone: FM bell with a decaying index
    index = 3 * np.exp(-t / 0.2)
    return np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * 1.4 * f0 * t)) * np.exp(-t / 0.4)


def _vibraphone(t, f0, rng):  # torus: partials 1, 4, 10 with a motor tremolo
    tremolo = 0.75 + 0.25 * np.sin(2 * np.pi * 7 * t)
    return _partials(t, f0, [1.0, 4.0, 10.0], [1, 0.35, 0.12]) * tremolo * np.exp(-t / 0.35)


def _pluck(t, f0, rng):  # pyramid: triangle-like, short pluck
    return _harmonics(t, f0, [1, 0, -1 / 9, 0, 1 / 25]) * np.exp(-t / 0.08)


def _organ(t, f0, rng):  # capsule: organ stops with vibrato, flat envelope
    vibrato = 0.004 * np.sin(2 * np.pi * 6 * t)
    tone = _harmonics(t * (1 + vibrato), f0, [1, 0.7, 0, 0.5, 0, 0, 0, 0.3])
    return tone * np.minimum(t / 0.05, 1)


def _chirp(t, f0, rng):  # star: bright upward glide
    return (np.sin(2 * np.pi * f0 * t * (1 + 1.5 * t)) + 0.5 * np.sin(2 * np.pi * 3 * f0 * t)) * np.exp(-t / 0.2)


def _noise_hit(t, f0, rng):  # cross: a noise burst band-passed around the note (percussive)
    kernel = np.sin(2 * np.pi * f0 * t[:64]) * np.hanning(64)
    return np.convolve(rng.standard_normal(t.size), kernel, mode="same") * np.exp(-t / 0.06)


def _metal_bar(t, f0, rng):  # diamond: inharmonic partials of a struck bar (glockenspiel)
    return _partials(t, f0, [1.0, 2.76, 5.40, 8.93], [1, 0.6, 0.35, 0.2]) * np.exp(-t / 0.5) * np.minimum(
        t / 0.002, 1)


INSTRUMENTS = {
    "sphere": _sine, "cube": _square, "cylinder": _saw, "cone": _fm_bell, "torus": _vibraphone,
    "pyramid": _pluck, "capsule": _organ, "star": _chirp, "cross": _noise_hit, "diamond": _metal_bar,
}
"""Category -> note synthesiser ``(t, f0, rng) -> wave`` (unnormalised)."""


def _background_noise(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    """White or low-passed (one-pole, "pink-ish") noise of standard deviation ``level``."""
    white = rng.standard_normal(n)
    pole = (0.0, 0.6, 0.9)[int(rng.integers(3))]
    noise = lfilter([1.0], [1.0, -pole], white) if pole else white
    return noise / max(noise.std(), 1e-9) * level


def synthesise(scene: Scene, cfg: WorldConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The scene's mono waveform and what is in it.

    Returns:
        ``(wave, info)``: float32 samples in [-1, 1] at ``cfg.sample_rate``, and the ground truth
        of the clip (note frequency, onset times in seconds, peak level, noise level).
    """
    rng = scene.rng("audio")
    rate, n = cfg.sample_rate, int(cfg.audio_seconds * cfg.sample_rate)
    attrs = scene.attributes
    f0 = FUNDAMENTAL[attrs["size"]] * (1 + rng.uniform(-0.02, 0.02))
    spacing = BEAT_SPACING[attrs["tempo"]] * (1 + rng.uniform(-0.05, 0.05))
    beats = int(attrs["beats"])
    latest_start = cfg.audio_seconds - spacing * (beats - 1) - NOTE_SECONDS
    start = rng.uniform(0.05, max(0.06, latest_start))
    level = AMPLITUDE[attrs["loudness"]] * rng.uniform(0.9, 1.1)
    wave = np.zeros(n, dtype=np.float64)
    t = np.arange(int(min(0.75 * spacing, NOTE_SECONDS) * rate)) / rate
    release = np.clip((t[-1] - t) / 0.02, 0, 1)   # every note ends in a 20 ms fade: no clicks
    onsets = []
    for beat in range(beats):
        onset = int((start + beat * spacing) * rate)
        note = (INSTRUMENTS[attrs["category"]](t, f0, rng) * release)[: n - onset]
        wave[onset:onset + note.size] += note / max(np.abs(note).max(), 1e-6) * level
        onsets.append(onset / rate)
    noise_level = cfg.noise_level * rng.uniform(0.5, 1.5)
    wave += _background_noise(rng, n, noise_level)
    wave += noise_level * 0.5 * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * np.arange(n) / rate)   # mains hum
    info = {"f0_hz": float(f0), "onsets_s": onsets, "beat_spacing_s": float(spacing), "peak_level": float(level),
            "noise_level": float(noise_level)}
    return np.clip(wave, -1, 1).astype(np.float32), info
