"""The procedural world: determinism, consistent modalities, ground truth, held-out captions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipelines.world import ATTRIBUTES, WorldConfig, generate, make_scene, render_sample
from pipelines.world.caption import FAMILIES, TEST_ONLY_FAMILIES
from pipelines.world.render import WALL_DISTANCE
from pipelines.world.sound import FUNDAMENTAL

CFG = WorldConfig()


def sample(index: int, split: str = "train", seed: int = 0, **attrs):
    scene = make_scene(seed, index, split, CFG)
    scene.attributes.update(attrs)
    for key in ("category", "colour", "size"):
        if key in attrs:
            setattr(scene.objects[0], key, attrs[key])
    return render_sample(scene, CFG)


def test_deterministic_by_seed():
    a, b, c = sample(3), sample(3), sample(3, seed=1)
    assert a["png"] == b["png"] and a["flac"] == b["flac"] and a["depth.png"] == b["depth.png"]
    assert a["png"] != c["png"]


def test_every_modality_is_present_and_decodable():
    s = sample(5)
    image = Image.open(io.BytesIO(s["png"]))
    assert image.mode == "RGB" and min(image.size) >= 128
    depth = np.asarray(Image.open(io.BytesIO(s["depth.png"])))
    assert depth.dtype == np.uint16 and depth.shape == image.size[::-1]
    wave, rate = sf.read(io.BytesIO(s["flac"]))
    assert rate == 16000 and wave.ndim == 1 and wave.size >= 2 * rate
    assert s["txt"].strip()
    assert set(s["json"]["attributes"]) == set(ATTRIBUTES)
    assert s["json"]["observability"] == {k: v.observability for k, v in ATTRIBUTES.items()}


def test_depth_is_the_z_buffer_of_the_scene():
    s = sample(7, count="1", position="centre")
    depth_m = np.asarray(Image.open(io.BytesIO(s["depth.png"]))).astype(float) / 1000
    obj = s["json"]["objects"][0]
    cy, cx = int(obj["y"] * CFG.image_size), int(obj["x"] * CFG.image_size)
    assert depth_m[cy, cx] < obj["distance"] + 0.01
    assert depth_m[2, 2] == pytest.approx(WALL_DISTANCE, abs=0.01)   # top-left: the back wall


def test_caption_states_the_category_and_records_what_it_states():
    for i in range(40):
        s = sample(i)
        record = s["json"]
        assert record["attributes"]["category"] in s["txt"]
        for name, stated in record["caption_states"].items():
            if stated and name in ("colour", "category", "position"):
                assert record["attributes"][name] in s["txt"]


def test_held_out_families_only_in_test():
    train = {s["json"]["caption_family"] for s in generate(150, "train", 0)}
    test = {s["json"]["caption_family"] for s in generate(150, "test", 0)}
    assert not train & set(TEST_ONLY_FAMILIES)
    assert test & set(TEST_ONLY_FAMILIES)
    assert train <= set(FAMILIES)


def _onsets(wave: np.ndarray, rate: int = 16000) -> int:
    frame = rate // 100
    energy = np.sqrt(np.mean(wave[: len(wave) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    active = energy > 0.25 * energy.max()
    return int(np.sum(active[1:] & ~active[:-1]) + active[0])


@pytest.mark.parametrize("beats", ["1", "2", "3", "4"])
def test_beats_are_audible(beats):
    s = sample(11, beats=beats, tempo="slow", category="pyramid", loudness="loud")
    wave, _ = sf.read(io.BytesIO(s["flac"]))
    assert _onsets(wave) == int(beats)


def test_loudness_and_pitch_follow_their_attributes():
    quiet, _ = sf.read(io.BytesIO(sample(12, loudness="quiet", category="sphere")["flac"]))
    loud, _ = sf.read(io.BytesIO(sample(12, loudness="loud", category="sphere")["flac"]))
    assert np.sqrt(np.mean(loud**2)) > 3 * np.sqrt(np.mean(quiet**2))
    peaks = {}
    for size in ("small", "large"):
        wave, rate = sf.read(io.BytesIO(sample(13, size=size, category="sphere", loudness="loud")["flac"]))
        spectrum = np.abs(np.fft.rfft(wave))
        peaks[size] = np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()]
    assert peaks["small"] == pytest.approx(FUNDAMENTAL["small"], rel=0.05)
    assert peaks["large"] == pytest.approx(FUNDAMENTAL["large"], rel=0.05)


def test_parallel_generation_matches_serial():
    serial = [s["png"] for s in generate(10, "test", 0, workers=1, chunk=3)]
    parallel = [s["png"] for s in generate(10, "test", 0, workers=2, chunk=3)]
    assert serial == parallel
