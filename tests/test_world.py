"""The procedural world: determinism, decodable and consistent modalities, ground truth, held-out captions."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anchorbind.errors import ConfigError
from anchorbind.pipelines.world import ATTRIBUTES, CATEGORIES, WorldConfig, generate, make_scene, render, render_sample
from anchorbind.pipelines.world.caption import FAMILIES, NUMBER, SETTING, TEST_ONLY_FAMILIES, caption
from anchorbind.pipelines.world.generate import depth_png_bytes
from anchorbind.pipelines.world.shapes import BOUNDS, SHAPES
from anchorbind.pipelines.world.sound import FUNDAMENTAL, synthesise

CFG = WorldConfig()


def audio_of(index: int = 11, **attrs: str) -> np.ndarray:
    """The clip of a scene with some attributes overridden (the sound depends only on attributes)."""
    scene = make_scene(0, index, "train", CFG)
    scene.attributes.update(attrs)
    return synthesise(scene, CFG)[0].astype(np.float64)


def onsets(wave: np.ndarray, rate: int = 16000) -> list[int]:
    """Frames (10 ms) where the energy envelope rises above 30% of its peak after having fallen below 10%
    (hysteresis, so a decaying note wobbling around one threshold counts once)."""
    frame = rate // 100
    energy = np.sqrt(np.mean(wave[: len(wave) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    found, armed = [], True
    for i, e in enumerate(energy / energy.max()):
        if armed and e > 0.3:
            found.append(i)
            armed = False
        elif e < 0.1:
            armed = True
    return found


def test_deterministic_by_seed_split_and_index():
    a = render_sample(make_scene(0, 3, "train"), CFG)
    b = render_sample(make_scene(0, 3, "train"), CFG)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    for other in (make_scene(1, 3, "train"), make_scene(0, 4, "train"), make_scene(0, 3, "test")):
        c = render_sample(other, CFG)
        assert c["png"] != a["png"] and c["depth.png"] != a["depth.png"] and c["flac"] != a["flac"]


def test_every_modality_is_present_and_decodable():
    s = render_sample(make_scene(0, 5, "train"), CFG)
    assert set(s) == {"__key__", "png", "depth.png", "txt", "flac", "json"}
    image = Image.open(io.BytesIO(s["png"]))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (160, 160)
    depth = Image.open(io.BytesIO(s["depth.png"]))
    assert depth.mode == "I;16" and depth.size == image.size
    wave, rate = sf.read(io.BytesIO(s["flac"]))
    info = sf.info(io.BytesIO(s["flac"]))
    assert info.format == "FLAC" and info.channels == 1 and rate == 16000 and wave.ndim == 1
    assert wave.size == 3 * rate and np.abs(wave).max() > 0.05
    assert s["txt"].strip()


def test_jpeg_and_image_size_options():
    s = render_sample(make_scene(0, 5, "train"), WorldConfig(image_size=128, image_format="jpg"))
    image = Image.open(io.BytesIO(s["jpg"]))
    assert image.format == "JPEG" and image.size == (128, 128) and "png" not in s


@pytest.mark.parametrize("bad", [{"image_size": 8}, {"image_format": "gif"}, {"audio_seconds": 1.0},
                                 {"supersample": 0}, {"sound_caption_rate": 2.0}, {"sample_rate": 100}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        WorldConfig(**bad)


@pytest.mark.parametrize("args", [(0, 0, "validation"), (-1, 0, "train"), (0, -3, "test")])
def test_bad_scene_arguments_are_refused(args):
    with pytest.raises(ConfigError, match=r"split|seed"):
        make_scene(*args)


def test_json_records_every_attribute_and_who_observes_it():
    for sample in generate(12, "train", 0):
        record = sample["json"]
        assert record["key"] == sample["__key__"]
        for name, spec in ATTRIBUTES.items():
            assert record["attributes"][name] in spec.values
            assert record["observability"][name] == spec.observability in ("visual", "audio", "both")
            assert set(record["carried_by"][name]) == set(spec.carried_by)
            assert isinstance(record["caption_states"][name], bool)
        main = record["objects"][0]
        assert (main["category"], main["colour"], main["size"]) == tuple(
            record["attributes"][k] for k in ("category", "colour", "size"))
        assert len(record["objects"]) == int(record["attributes"]["count"])
        assert len(record["audio"]["onsets_s"]) == int(record["attributes"]["beats"])


def test_depth_png_round_trips_in_millimetres():
    depth_m = np.random.default_rng(0).uniform(0.5, 8.0, (20, 30)).astype(np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(depth_png_bytes(depth_m))))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, np.round(depth_m * 1000).astype(np.uint16))


def _camera_ray(scene, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Origin, unit world direction and depth factor of the ray through a pixel centre (an independent
    re-derivation of the pinhole model, not the renderer's code)."""
    cam = scene.camera
    u, v = (col + 0.5) / size * 2 - 1, 1 - (row + 0.5) / size * 2
    d_cam = np.array([u, v, 1 / np.tan(cam.fov / 2)])
    d_cam /= np.linalg.norm(d_cam)
    return cam.position, cam.rotation @ d_cam, d_cam[2]


def test_depth_is_the_z_buffer_of_the_rendered_view():
    """With one ray per pixel the stored depth must equal analytic camera-space z of floor, wall and a sphere."""
    cfg = WorldConfig(image_size=64, supersample=1)
    scene = make_scene(0, 7, "train", cfg)
    scene.attributes["category"] = scene.objects[0].category = "sphere"
    del scene.objects[1:]
    rendering = render(scene, cfg)
    s = render_sample(scene, cfg)
    stored = np.asarray(Image.open(io.BytesIO(s["depth.png"]))).astype(np.float64) / 1000
    np.testing.assert_allclose(stored, rendering.depth, atol=0.0006)
    obj = scene.objects[0]
    centre = np.array([obj.x, obj.radius, obj.z])           # the unit sphere rests on the floor
    checked = {"wall": 0, "floor": 0, "sphere": 0}
    for row, col in itertools.product(range(0, 64, 3), range(0, 64, 3)):
        origin, d, z_factor = _camera_ray(scene, row, col, 64)
        t_wall = (scene.wall_distance - origin[2]) / d[2]
        t_floor = -origin[1] / d[1] if d[1] < 0 else np.inf
        oc = origin - centre
        b, c = oc @ d, oc @ oc - obj.radius**2
        t_sphere = -b - np.sqrt(b * b - c) if b * b >= c else np.inf
        t = min(t_wall, t_floor, t_sphere)
        kind = "sphere" if t == t_sphere else "floor" if t == t_floor else "wall"
        if abs(t_sphere - min(t_wall, t_floor)) < 0.05 or (kind == "sphere" and b * b - c < 1e-3):
            continue   # silhouette pixels: too close to call
        assert stored[row, col] == pytest.approx(t * z_factor, abs=2e-3), (row, col, kind)
        assert (rendering.instance[row, col] == 0) == (kind == "sphere")
        checked[kind] += 1
    assert min(checked.values()) >= 5, checked


def test_objects_are_nearer_than_the_background_and_visible():
    for index in range(10):
        scene = make_scene(0, index, "test", CFG)
        rendering = render(scene, CFG)
        mm = np.asarray(Image.open(io.BytesIO(render_sample(scene, CFG)["depth.png"]))).astype(float)
        assert mm.min() > 500 and mm.max() < 2 * scene.wall_distance * 1000     # finite: the wall bounds it
        main = rendering.instance == 0
        assert main.mean() > 0.03      # the main object is large enough to be recognised
        assert np.median(mm[main]) < np.median(mm[rendering.instance == -1])
        obj = scene.objects[0]       # nothing of it lies beyond its bounding sphere (z <= distance from camera)
        centre_y, radius = BOUNDS[obj.category]
        reach = np.linalg.norm(np.array([obj.x, centre_y * obj.radius, obj.z]) - scene.camera.position)
        assert mm[main].max() < (reach + radius * obj.radius) * 1000
        # every object is visible, so the count is observable
        assert len(set(np.unique(rendering.instance)) - {-1}) == int(scene.attributes["count"])


def test_position_is_where_the_main_object_appears():
    for index in range(12):
        scene = make_scene(0, index, "train", CFG)
        columns = np.nonzero(render(scene, CFG).instance == 0)[1]
        third = ("left", "centre", "right")[min(int(columns.mean() / CFG.image_size * 3), 2)]
        assert third == scene.attributes["position"]


def _states(text: str, name: str, value: str) -> bool:
    if name == "count":
        return f"{NUMBER[value]} object" in text or (value == "1" and "a single object" in text)
    if name == "beats":
        return f"{NUMBER[value]} " in text
    if name == "background":
        return SETTING[value] in text
    return value in text


def test_caption_states_the_category_and_records_what_it_states():
    states_seen = {name: set() for name in ATTRIBUTES}
    for split in ("train", "test"):
        for index in range(150):
            scene = make_scene(0, index, split, CFG)
            text, _, states = caption(scene, CFG)
            assert states["category"] and scene.attributes["category"] in text
            for name, stated in states.items():
                states_seen[name].add(stated)
                if stated:
                    assert _states(text, name, scene.attributes[name]), (name, text)
                assert not stated or ATTRIBUTES[name].stated_in_caption
    # colour, size, count... are stated sometimes, not always
    for name in ("colour", "size", "count", "position", "background", "beats"):
        assert states_seen[name] == {True, False}, name


def test_held_out_families_only_in_test():
    families = {split: {caption(make_scene(0, i, split, CFG), CFG)[1] for i in range(200)}
                for split in ("train", "val", "test")}
    assert not (families["train"] | families["val"]) & set(TEST_ONLY_FAMILIES)
    assert set(TEST_ONLY_FAMILIES) <= families["test"]
    assert families["train"] == set(FAMILIES) - set(TEST_ONLY_FAMILIES)


@pytest.mark.parametrize("beats", ["1", "2", "3", "4"])
def test_beats_are_countable_from_the_envelope(beats):
    assert len(onsets(audio_of(beats=beats, tempo="slow", category="pyramid", loudness="loud"))) == int(beats)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_instrument_keeps_its_beats_audible(category):
    """Even fast and quiet, every note is separated from the next by a gap above the noise."""
    for index, beats in ((11, "3"), (12, "4")):
        for tempo in ("slow", "fast"):
            wave = audio_of(index, beats=beats, tempo=tempo, category=category, loudness="quiet")
            assert len(onsets(wave)) == int(beats), (tempo, beats)


def test_tempo_sets_the_onset_spacing():
    spacing = {}
    for tempo in ("slow", "fast"):
        frames = onsets(audio_of(beats="4", tempo=tempo, category="pyramid", loudness="loud"))
        assert len(frames) == 4
        spacing[tempo] = np.mean(np.diff(frames)) / 100
    assert spacing["slow"] == pytest.approx(0.7, rel=0.1) and spacing["fast"] == pytest.approx(0.32, rel=0.1)


def test_loudness_and_pitch_follow_their_attributes():
    quiet = audio_of(loudness="quiet", category="sphere")
    loud = audio_of(loudness="loud", category="sphere")
    assert np.sqrt(np.mean(loud**2)) > 3 * np.sqrt(np.mean(quiet**2))
    for size in ("small", "medium", "large"):
        wave = audio_of(size=size, category="sphere", loudness="loud")
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(wave.size, 1 / 16000)[spectrum.argmax()]
        assert peak == pytest.approx(FUNDAMENTAL[size], rel=0.03)


def test_each_category_has_its_own_timbre():
    """Average spectra at one pitch differ between every pair of instruments."""
    spectra = {}
    for category in CATEGORIES:
        wave = audio_of(category=category, size="medium", loudness="loud", beats="2", tempo="slow")
        frames = wave[: 46 * 1024].reshape(46, 1024) * np.hanning(1024)
        spectrum = np.log1p(np.abs(np.fft.rfft(frames, axis=1)).mean(0))
        spectra[category] = spectrum / np.linalg.norm(spectrum)
    for a, b in itertools.combinations(CATEGORIES, 2):
        assert spectra[a] @ spectra[b] < 0.985, (a, b)


def test_parallel_generation_matches_serial():
    serial = list(generate(7, "test", 0, workers=1, chunk=2))
    parallel = list(generate(7, "test", 0, workers=2, chunk=2))
    assert [s["__key__"] for s in serial] == [f"test{i:07d}" for i in range(7)]
    assert serial == parallel


@pytest.mark.parametrize("category", CATEGORIES)
def test_solids_stay_inside_their_culling_sphere_and_face_the_rays(category):
    """Rays from all around: every hit lies within BOUNDS (else the renderer would clip the solid) and the
    normal there faces back toward the ray."""
    rng = np.random.default_rng(0)
    centre_y, radius = BOUNDS[category]
    targets = rng.uniform(-1.3, 1.3, (3, 4000)) + np.array([[0], [centre_y], [0]])
    origin = np.array([[0.3], [3.0], [-4.0]], np.float32) * 1.5
    dirs = (targets - origin).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    hit = SHAPES[category](origin, dirs)
    found = np.isfinite(hit.t)
    assert 0.15 < found.mean() < 0.95
    points = origin + dirs[:, found] * hit.t[found]
    assert np.linalg.norm(points - np.array([[0], [centre_y], [0]]), axis=0).max() <= radius + 1e-3
    assert points[1].min() >= -1e-3                                   # resting on the floor, not through it
    assert ((hit.normal[:, found] * dirs[:, found]).sum(0) < 0.05).all()       # (grazing hits: ~perpendicular)
    np.testing.assert_allclose(np.linalg.norm(hit.normal[:, found], axis=0), 1, atol=1e-3)
