"""Synthesising a scene's sound: timbre from the category, pitch from the size, and rhythm,
tempo and loudness that only the sound carries.

Each beat is one note of the main object's instrument. The instruments differ in harmonic
content and envelope (what a spectrogram shows), so the category is audible; ``size`` sets the
fundamental (large = low), which vision sees as size — a shared attribute. ``beats``, ``tempo``
and ``loudness`` have no visual counterpart: they are the non-visual attributes the
visiocentrism analysis looks for.
"""

from __future__ import annotations

import numpy as np

from pipelines.world.config import WorldConfig
from pipelines.world.scene import Scene

__all__ = ["FUNDAMENTAL", "synthesise"]

FUNDAMENTAL = {"small": 523.25, "medium": 261.63, "large": 130.81}  # C5, C4, C3
BEAT_SPACING = {"slow": 0.7, "fast": 0.32}
AMPLITUDE = {"quiet": 0.12, "loud": 0.6}


def _harmonics(t: np.ndarray, f0: float, weights: list[float]) -> np.ndarray:
    return sum(w * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, w in enumerate(weights))


def _note(category: str, f0: float, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One note of the category's instrument over times ``t`` (seconds since onset)."""
    if category == "sphere":  # pure tone, soft attack
        wave, env = np.sin(2 * np.pi * f0 * t), np.minimum(t / 0.03, 1) * np.exp(-t / 0.25)
    elif category == "cube":  # square-like: odd harmonics
        wave, env = _harmonics(t, f0, [1, 0, 1 / 3, 0, 1 / 5, 0, 1 / 7]), np.exp(-t / 0.18)
    elif category == "cylinder":  # sawtooth-like: all harmonics
        wave, env = _harmonics(t, f0, [1 / k for k in range(1, 9)]), np.exp(-t / 0.3)
    elif category == "cone":  # FM bell
        wave, env = np.sin(2 * np.pi * f0 * t + 3 * np.exp(-t / 0.2) * np.sin(2 * np.pi * 1.4 * f0 * t)), np.exp(
            -t / 0.4)
    elif category == "torus":  # tremolo
        wave, env = np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 18 * t)), np.exp(-t / 0.3)
    elif category == "pyramid":  # triangle-like, plucked
        wave, env = _harmonics(t, f0, [1, 0, -1 / 9, 0, 1 / 25]), np.exp(-t / 0.08)
    elif category == "star":  # bright upward chirp
        wave, env = np.sin(2 * np.pi * f0 * t * (1 + 1.5 * t)) + 0.5 * np.sin(2 * np.pi * 3 * f0 * t), np.exp(-t / 0.2)
    else:  # cross: filtered noise burst around f0 (percussive)
        noise = rng.standard_normal(t.size)
        wave = np.convolve(noise, np.sin(2 * np.pi * f0 * np.arange(64) / 16000) * np.hanning(64), mode="same") * 0.3
        env = np.exp(-t / 0.06)
    return wave * env


def synthesise(scene: Scene, cfg: WorldConfig) -> np.ndarray:
    """The scene's mono waveform (float32 in [-1, 1]) at ``cfg.sample_rate``."""
    rng = scene.rng("audio")
    rate, n = cfg.sample_rate, int(cfg.audio_seconds * cfg.sample_rate)
    attrs = scene.attributes
    f0 = FUNDAMENTAL[attrs["size"]] * (1 + rng.uniform(-0.02, 0.02))
    spacing = BEAT_SPACING[attrs["tempo"]] * (1 + rng.uniform(-0.05, 0.05))
    beats = int(attrs["beats"])
    start = rng.uniform(0.05, max(0.06, cfg.audio_seconds - spacing * (beats - 1) - 0.5))
    wave = np.zeros(n, dtype=np.float64)
    note_len = int(min(spacing, 0.6) * rate)
    t = np.arange(note_len) / rate
    for beat in range(beats):
        onset = int((start + beat * spacing) * rate)
        note = _note(attrs["category"], f0, t, rng)[: n - onset]
        wave[onset:onset + note.size] += note / max(np.abs(note).max(), 1e-6)
    wave *= AMPLITUDE[attrs["loudness"]]
    wave += rng.normal(0, 0.004, n)  # background noise
    return np.clip(wave, -1, 1).astype(np.float32)
