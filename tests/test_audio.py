"""The audio plugin: ImageBind-equal features, resampling, clips, embeddings, native objective, bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchvision.transforms

from anchorbind.errors import ConfigError, InputError
from anchorbind.modalities.audio import AudioPlugin, clip_bounds, random_clip_bounds
from anchorbind.registry import create_plugin

EMBED = 16
TINY = {"width": 32, "depth": 1, "num_heads": 2}


# ---------------------------------------------------------------------------------------------
# ImageBind's recipe, re-implemented from imagebind/data.py and pytorchvideo's
# ConstantClipsPerVideoSampler at the commit ImageBind pins (28fe037), with its constants.
# ---------------------------------------------------------------------------------------------
def imagebind_clip_timepoints(duration: float, clip_duration: int = 2, clips_per_video: int = 3):
    """pytorchvideo ConstantClipsPerVideoSampler driven as ImageBind's get_clip_timepoints does."""
    clip = Fraction(clip_duration)
    max_possible_clip_start = Fraction(max(duration - clip, 0))
    uniform_clip = Fraction(max_possible_clip_start, max(clips_per_video - 1, 1))
    timepoints, index = [], 0
    while True:
        start = uniform_clip * index
        index += 1
        timepoints.append((start, start + clip))
        if index >= clips_per_video or uniform_clip * index > max_possible_clip_start:
            return timepoints


def imagebind_waveform2melspec(waveform, sample_rate, num_mel_bins, target_length):
    waveform -= waveform.mean()  # in place, on a view of the whole waveform (as ImageBind)
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform, htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=num_mel_bins, dither=0.0, frame_length=25, frame_shift=10,
    ).transpose(0, 1)
    p = target_length - fbank.size(1)
    if p > 0:
        fbank = torch.nn.functional.pad(fbank, (0, p), mode="constant", value=0)
    elif p < 0:
        fbank = fbank[:, 0:target_length]
    return fbank.unsqueeze(0)


def imagebind_audio(waveform: torch.Tensor, sr: int) -> torch.Tensor:
    """load_and_transform_audio_data for one waveform (channels, samples) as torchaudio.load returns it."""
    num_mel_bins, target_length, sample_rate, mean, std = 128, 204, 16000, -4.268, 9.138
    if sample_rate != sr:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sr, new_freq=sample_rate)
    clips = []
    for start, end in imagebind_clip_timepoints(waveform.size(1) / sample_rate):
        clip = waveform[:, int(start * sample_rate):int(end * sample_rate)]
        clips.append(imagebind_waveform2melspec(clip, sample_rate, num_mel_bins, target_length))
    normalize = torchvision.transforms.Normalize(mean=mean, std=std)
    return torch.stack([normalize(clip) for clip in clips])


def write_test_audio(path: Path, rate: int, seconds: float, channels: int, subtype: str | None = None) -> Path:
    """A chirp plus noise (and a small DC offset, which real recordings often have) as a real file."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.03 * rng.standard_normal(t.size) + 0.05
    right = 0.3 * np.sin(2 * np.pi * 660 * t) + 0.03 * rng.standard_normal(t.size) - 0.02
    sf.write(path, np.stack([left, right], 1)[:, :channels], rate, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def plugin() -> AudioPlugin:
    return create_plugin("audio", TINY, embed_dim=EMBED).eval()


@pytest.fixture
def chirp(tmp_path: Path) -> Path:
    """5 s stereo chirp + noise at 44.1 kHz, as FLAC."""
    return write_test_audio(tmp_path / "chirp.flac", 44100, 5.0, 2)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "rate", "seconds", "channels", "subtype"),
    [
        ("stereo.flac", 44100, 5.0, 2, None),  # resampled, 3 overlapping clips
        ("mono.wav", 16000, 1.3, 1, "FLOAT"),  # no resampling, shorter than a clip: padded
        ("mono.flac", 22050, 3.7, 1, None),
        ("long.wav", 48000, 7.25, 2, "PCM_24"),  # clips apart (no overlap)
    ],
)
def test_features_equal_imagebind_recipe(plugin, tmp_path, name, rate, seconds, channels, subtype):
    path = write_test_audio(tmp_path / name, rate, seconds, channels, subtype)
    samples, sr = sf.read(path, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(samples.T.copy())
    # The one documented difference: we average the channels, ImageBind's fbank reads channel 0.
    # On the mixed waveform (and on any mono file) the recipes must agree.
    expected = imagebind_audio(waveform.mean(0, keepdim=True), sr)
    ours = plugin.load(path)
    assert ours.shape == (3, 1, 128, 204)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_reference_overlap_quirk_is_visible(tmp_path):
    """ImageBind's in-place mean removal on overlapping clips changes features: the test above can see it."""
    path = write_test_audio(tmp_path / "dc.wav", 16000, 5.0, 1, "FLOAT")
    waveform = torch.from_numpy(sf.read(path, dtype="float32", always_2d=True)[0].T.copy())
    with_quirk = imagebind_audio(waveform.clone(), 16000)
    separate = torch.stack([imagebind_audio(waveform[:, int(a * 16000):int(b * 16000)].clone(), 16000)[0]
                            for a, b in imagebind_clip_timepoints(5.0)])
    assert (with_quirk[1:] - separate[1:]).abs().max() > 0.1


def test_clip_bounds_follow_pytorchvideo_sampler():
    rng = np.random.default_rng(1)
    for samples in [400, 1600, 31999, 32000, 32001, 80000, *rng.integers(400, 400_000, 300).tolist()]:
        for clips in (1, 2, 3, 5):
            expected = [(int(a * 16000), int(b * 16000))
                        for a, b in imagebind_clip_timepoints(samples / 16000, 2, clips)]
            assert clip_bounds(samples, 16000, 2.0, clips) == expected


def test_resampling_and_channel_mixing(plugin, tmp_path):
    def tone(rate):
        return 0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate)

    sf.write(tmp_path / "hi.wav", np.stack([tone(44100), tone(44100)], 1), 44100, subtype="FLOAT")
    sf.write(tmp_path / "lo.wav", tone(16000), 16000, subtype="FLOAT")
    high, low = plugin.load(tmp_path / "hi.wav"), plugin.load(tmp_path / "lo.wav")
    torch.testing.assert_close(high, low, rtol=0, atol=0.01)
    # Same through 16-bit FLAC: quantisation noise differs only in the near-empty mel bands.
    sf.write(tmp_path / "hi.flac", np.stack([tone(44100), tone(44100)], 1), 44100)
    assert (plugin.load(tmp_path / "hi.flac") - low).abs().mean() < 0.02


def test_array_and_bytes_inputs_match_files(plugin, tmp_path, chirp):
    wave = (0.2 * np.sin(2 * np.pi * 300 * np.arange(32000) / 16000)).astype(np.float32)
    sf.write(tmp_path / "float.wav", wave, 16000, subtype="FLOAT")
    from_file = plugin.load(tmp_path / "float.wav")
    torch.testing.assert_close(plugin.load(wave), from_file, rtol=0, atol=0)
    torch.testing.assert_close(plugin.load(torch.from_numpy(wave)[None].repeat(2, 1)), from_file, rtol=0, atol=0)
    pcm = np.round(wave * 32767).astype(np.int16)
    sf.write(tmp_path / "pcm.wav", pcm, 16000, subtype="PCM_16")
    torch.testing.assert_close(plugin.load(pcm), plugin.load(tmp_path / "pcm.wav"), rtol=0, atol=0)
    # A shard member's bytes read as the file they came from; the format is sniffed.
    torch.testing.assert_close(plugin.load(chirp.read_bytes()), plugin.load(chirp), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["OGG", "MP3"])
def test_compressed_formats_decode(plugin, tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = write_test_audio(tmp_path / f"a.{fmt.lower()}", 44100, 3.0, 2)
    clips = plugin.load(path.read_bytes())
    assert clips.shape == (3, 1, 128, 204) and torch.isfinite(clips).all()
    reference = plugin.load(write_test_audio(tmp_path / "a.wav", 44100, 3.0, 2, "FLOAT"))
    assert (clips - reference).abs().mean() < 0.5  # lossy, but the same sound


def test_clips_train_and_eval(plugin, chirp):
    assert plugin.load(chirp).shape == (3, 1, 128, 204)
    torch.manual_seed(0)
    first = plugin.load(chirp, train=True)
    torch.manual_seed(0)
    again = plugin.load(chirp, train=True)
    assert first.shape == (1, 1, 128, 204)
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # random start from torch's RNG
    starts = set()
    for seed in range(5):
        torch.manual_seed(seed)
        starts.add(plugin.load(chirp, train=True)[0, 0, 0, :20].sum().item())
    assert len(starts) > 1
    three = create_plugin("audio", {**TINY, "train_clips_per_sample": 3}, embed_dim=EMBED)
    assert three.load(chirp, train=True).shape == (3, 1, 128, 204)
    with pytest.raises(ValueError, match="train=True"):
        plugin.collate([plugin.load(chirp), first])


def test_embeddings_average_normalised_clips(plugin, chirp, tmp_path):
    other = write_test_audio(tmp_path / "other.wav", 16000, 4.0, 1, "FLOAT")
    batch = plugin.collate([plugin.load(chirp), plugin.load(other)])
    assert batch.shape == (2, 3, 1, 128, 204)
    with torch.no_grad():
        features, emb = plugin.forward_with_features(batch)
        torch.testing.assert_close(emb, plugin(batch))
        torch.testing.assert_close(features, plugin.forward_features(batch))
        per_clip = torch.stack([plugin(batch[:, i:i + 1]) for i in range(3)], 1)  # each unit norm
        per_clip_features = torch.stack([plugin.forward_features(batch[:, i:i + 1]) for i in range(3)], 1)
    assert emb.shape == (2, EMBED) and features.shape == (2, TINY["width"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(emb, torch.nn.functional.normalize(per_clip.mean(1), dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features, per_clip_features.mean(1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per_clip[:, 0], per_clip[:, 2], atol=1e-3)  # the clips do differ
    # A file shorter than a clip gives three copies of one clip: the same embedding as that clip.
    sf.write(tmp_path / "short.wav", 0.3 * np.sin(np.arange(16000) / 7), 16000)
    short = plugin.collate([plugin.load(tmp_path / "short.wav")])
    with torch.no_grad():
        torch.testing.assert_close(plugin(short), plugin(short[:, :1]), rtol=1e-4, atol=1e-5)
    assert plugin.logit_scale().item() == pytest.approx(20.0) and not plugin.logit_scale.learnable
    with pytest.raises(ValueError, match="audio batches"):
        plugin(batch[:, :, :, :64])


def test_native_objective_trains_the_trunk(chirp):
    torch.manual_seed(0)
    plugin = create_plugin("audio", {**TINY, "native_loss_weight": 1.0}, embed_dim=EMBED)
    batch = plugin.collate([plugin.load(chirp, train=True) for _ in range(4)])
    before = plugin.trunk.blocks[0].attn.qkv.weight.detach().clone()
    loss = plugin.native_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert plugin.trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert plugin.head.proj.weight.grad is None  # the native objective never touches the anchor head
    torch.optim.SGD(plugin.parameters(), lr=0.1).step()
    assert not torch.equal(before, plugin.trunk.blocks[0].attn.qkv.weight)
    # Two views of one clip differ per example (masks, shift and gain are drawn independently).
    same = batch[:1, 0].repeat(4, 1, 1, 1)
    views = plugin.augment(same)
    assert views.shape == same.shape and not torch.equal(views, plugin.augment(same))
    assert all(not torch.equal(views[0], views[i]) for i in range(1, 4))
    # Off by default, and then no parameter exists that would never get a gradient.
    default = create_plugin("audio", TINY, embed_dim=EMBED)
    assert default.native_loss(batch) is None
    assert not any("native" in name for name, _ in default.named_parameters())


def test_bad_inputs_are_named(plugin, tmp_path, chirp):
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    no_frames = tmp_path / "noframes.wav"
    sf.write(no_frames, np.zeros((0,), dtype=np.float32), 16000)
    silent = tmp_path / "silent.flac"
    sf.write(silent, np.zeros((16000, 2), dtype=np.float32), 16000)
    cancel = tmp_path / "cancel.wav"
    tone = 0.3 * np.sin(np.arange(16000) / 5)
    sf.write(cancel, np.stack([tone, -tone], 1), 16000, subtype="FLOAT")
    nan_file = tmp_path / "nan.wav"
    sf.write(nan_file, np.where(np.arange(16000) == 500, np.nan, 0.1).astype(np.float32), 16000, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.ones(100, dtype=np.float32), 16000)
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(chirp.read_bytes()[: chirp.stat().st_size // 2])
    wav = write_test_audio(tmp_path / "whole.wav", 16000, 3.0, 2)
    cut_wav = tmp_path / "cut.wav"
    cut_wav.write_bytes(wav.read_bytes()[: wav.stat().st_size * 2 // 3])
    nan_array = np.full(16000, 0.1, dtype=np.float32)
    nan_array[7] = np.nan
    cases = [
        (zero_bytes, "empty file"),
        (no_frames, "empty audio"),
        (silent, "all-zero"),
        (cancel, "cancel out"),
        (nan_file, "NaN"),
        (short, "too short"),
        (cut_flac, "truncated"),
        (cut_wav, "truncated: the WAV data chunk"),
        (tmp_path / "missing.wav", "unreadable"),
        (b"this is not audio at all", "not decodable"),
        (np.zeros((16000, 2), dtype=np.float32) + 0.1, "wrong channel layout"),
        (np.zeros((2, 3, 4000), dtype=np.float32) + 0.1, "wrong channel layout"),
        (torch.full((12, 16000), 0.1), "wrong channel layout"),
        (nan_array, "NaN"),
        (torch.tensor([0.1, float("inf")] * 8000), "infinite"),
        (np.zeros(16000, dtype=np.float32), "all-zero"),
        (np.zeros(0, dtype=np.float32), "empty audio"),
        (np.ones(16000, dtype=np.complex64), "unsupported sample type"),
        (np.ones(16000, dtype=np.int64), "unsupported sample type"),
        (np.float32(0.5) * np.ones(100, dtype=np.float32), "too short"),
        (12345, "expected a path"),
    ]
    for source, reason in cases:
        with pytest.raises(InputError, match=reason) as info:
            plugin.load(source)
        message = str(info.value)
        assert message.startswith("audio input "), message
        if isinstance(source, Path):
            assert source.name in message, message
        elif isinstance(source, (np.ndarray, torch.Tensor)):
            assert f"shape={tuple(source.shape)}" in message, message
        elif isinstance(source, bytes):
            assert f"<{len(source)} bytes>" in message, message
    with pytest.raises(InputError, match=r"not decodable audio \(.*[Ff]ormat"):  # libsndfile's own words
        plugin.load(b"this is not audio at all")


@pytest.mark.parametrize("fmt", ["OGG", "MP3"])
def test_truncated_compressed_files(plugin, tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    whole = write_test_audio(tmp_path / f"a.{fmt.lower()}", 44100, 5.0, 2)
    with pytest.raises(InputError, match="truncated") as info:
        plugin.load(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "bytes>" in str(info.value)


def test_streamed_wav_without_length_is_read(plugin, tmp_path):
    """A WAV written to a pipe declares no data length (0xFFFFFFFF): complete, not truncated."""
    path = write_test_audio(tmp_path / "a.wav", 16000, 2.5, 1, "PCM_16")
    data = bytearray(path.read_bytes())
    data_at = data.index(b"data")
    data[data_at + 4:data_at + 8] = b"\xff\xff\xff\xff"
    torch.testing.assert_close(plugin.load(bytes(data)), plugin.load(path), rtol=0, atol=0)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="sampel_rate"):
        create_plugin("audio", {"sampel_rate": 8000}, embed_dim=EMBED)
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        create_plugin("audio", {"width": 30, "num_heads": 4}, embed_dim=EMBED)
    with pytest.raises(ConfigError, match="min_duration"):
        create_plugin("audio", {"min_duration": 0.01}, embed_dim=EMBED)
    with pytest.raises(ConfigError, match="global_pool"):
        create_plugin("audio", {"global_pool": "max"}, embed_dim=EMBED)
    with pytest.raises(ConfigError, match="clips_per_sample"):
        create_plugin("audio", {"clips_per_sample": 0}, embed_dim=EMBED)


def test_other_trunk_shapes(chirp):
    """Patch sizes that do not tile 128 x 204 and class-token pooling build and run."""
    plugin = create_plugin("audio", {**TINY, "patch_size": 12, "global_pool": "token", "target_length": 100},
                           embed_dim=EMBED)
    batch = plugin.collate([plugin.load(chirp)])
    assert batch.shape == (1, 3, 1, 128, 100)
    assert plugin(batch).shape == (1, EMBED)


# ---------------------------------------------------------------------------------------------
# Input cost and values (issue 13): files are read in windows, long files are refused or cheap,
# absurd amplitudes are refused.
# ---------------------------------------------------------------------------------------------
def whole_file_clips(processor, source, train: bool = False) -> torch.Tensor:
    """The processor's features computed the way it did before windowed reading: decode the whole
    file, mix, resample all of it, then cut the clips (``read_waveform`` is that path)."""
    from anchorbind.modalities.audio import read_waveform, waveform_to_clips

    cfg = processor.config
    wave = read_waveform(source, cfg.sample_rate, cfg.min_duration)
    if train:
        bounds = random_clip_bounds(wave.numel(), cfg.sample_rate, cfg.clip_duration, cfg.train_clips_per_sample)
    else:
        bounds = clip_bounds(wave.numel(), cfg.sample_rate, cfg.clip_duration, cfg.clips_per_sample)
    return waveform_to_clips(wave, cfg.sample_rate, bounds, num_mel_bins=cfg.num_mel_bins,
                             target_length=cfg.target_length, mean=cfg.mean, std=cfg.std)


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (16000, 1), (16000, 2), (22050, 2), (44100, 2),
                                              (48000, 1)])
def test_windowed_reading_equals_the_whole_file(plugin, tmp_path, rate, channels):
    """Shorter than a clip, overlapping clips (whole file read), and clips apart (windows only)."""
    for seconds in (0.7, 3.0, 11.3):
        path = write_test_audio(tmp_path / f"{seconds}.flac", rate, seconds, channels)
        for train, seed in ((False, 0), (True, 3)):
            torch.manual_seed(seed)
            ours = plugin.load(path, train=train)
            torch.manual_seed(seed)
            whole = whole_file_clips(plugin.processor, path, train)
            if rate == 16000:  # no resampling: the same samples, so the same features, bit for bit
                torch.testing.assert_close(ours, whole, rtol=0, atol=0)
            else:
                # The windows are resampled with the whole file's filter phases and margins, so
                # they differ at most by the convolution's float32 summation order, which torch
                # picks by input length (bit-identical on x86 with torch 2.9, where this was
                # measured; near-empty mel bands amplify an ulp to ~1e-3 where it is not).
                assert (ours - whole).abs().max() <= 2e-3, (seconds, train)
                assert (ours - whole).abs().mean() <= 1e-5, (seconds, train)


@pytest.mark.parametrize("fmt", ["WAV", "OGG", "MP3"])
def test_windowed_reading_of_other_formats(plugin, tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = write_test_audio(tmp_path / f"a.{fmt.lower()}", 44100, 11.3, 2)
    # MP3 decoded after a seek may differ from a decode from the start by an ulp (mpg123's state)
    tolerance = 2e-3 if fmt == "MP3" else 0.0
    assert (plugin.load(path) - whole_file_clips(plugin.processor, path)).abs().max() <= tolerance


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_truncation_is_found_where_no_clip_reads(plugin, tmp_path, fmt):
    """A random training clip at the start of a file cut near its end: the end is still checked."""
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = write_test_audio(tmp_path / f"a.{fmt.lower()}", 22050, 30.0, 2, "PCM_16" if fmt == "WAV" else None)
    data = path.read_bytes()
    cut = data[: len(data) * 9 // 10]
    torch.manual_seed(0)
    ((_, end),) = random_clip_bounds(30 * 16000, 16000, 2.0, 1)
    assert end < 0.85 * 30 * 16000, "the clip lies before the cut"
    torch.manual_seed(0)
    first_clip = plugin.processor.load(data, train=True)
    with pytest.raises(InputError, match="truncated"):
        torch.manual_seed(0)
        plugin.load(cut, train=True)
    assert first_clip.shape == (1, 1, 128, 204)


@pytest.fixture(scope="module")
def twenty_minutes(tmp_path_factory) -> Path:
    """20 minutes of 44.1 kHz stereo FLAC, silence with a 1 s tone each minute (~0.5 MB), written in blocks."""
    path = tmp_path_factory.mktemp("long") / "twenty_minutes.flac"
    rate = 44100
    minute = np.zeros((60 * rate, 2), np.float32)
    minute[:rate] = 0.25 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)[:, None]
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, format="FLAC", subtype="PCM_16") as out:
        for _ in range(20):
            out.write(minute)
    return path


LONG_FILE_PROBE = """
import dataclasses, json, resource, sys, time
import numpy as np, soundfile as sf, torch
from anchorbind.modalities.audio import AudioConfig
from anchorbind.registry import create_processor
torch.set_num_threads(1)
unlimited = {"max_duration": None} if "max_duration" in {f.name for f in dataclasses.fields(AudioConfig)} else {}
processor = create_processor("audio", unlimited)
short = sys.argv[2]
sf.write(short, 0.3 * np.sin(np.arange(3 * 44100) / 7), 44100, format="FLAC")
processor.load(short)  # first use: lazy initialisation is not the long file's cost
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
clips = processor.load(sys.argv[1])
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "peak_growth_mb": grown, "shape": list(clips.shape),
                  "finite": bool(torch.isfinite(clips).all())}))
"""


def test_a_long_file_is_read_fast_in_bounded_memory(twenty_minutes, tmp_path):
    """Decoding all 20 minutes costs seconds and over a GB; the clips' windows cost neither."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, subprocess_env

    done = subprocess.run([sys.executable, "-c", LONG_FILE_PROBE, str(twenty_minutes), str(tmp_path / "short.flac")],
                          env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["shape"] == [3, 1, 128, 204] and probe["finite"]
    # ru_maxrss counts every allocation (numpy, torch, libsndfile). Measured: windows 0.03 s and
    # ~6 MB; the whole file 4-13 s and 1.2 GB (44.1 kHz stereo), so the bounds are generous.
    assert probe["peak_growth_mb"] < 100, probe
    assert probe["seconds"] < 2, probe


def test_files_over_max_duration_are_refused_before_decoding(plugin, twenty_minutes):
    start = __import__("time").perf_counter()
    with pytest.raises(InputError, match=r"twenty_minutes\.flac.*too long: 1200\.0 s > max_duration 600 s"):
        plugin.load(twenty_minutes)
    assert __import__("time").perf_counter() - start < 2  # the header says it: nothing is decoded
    longer = create_plugin("audio", {**TINY, "max_duration": 4.0}, embed_dim=EMBED)
    tone = (0.3 * np.sin(np.arange(5 * 16000) / 7)).astype(np.float32)
    with pytest.raises(InputError, match=r"shape=\(80000,\).*too long: 5\.0 s > max_duration 4 s"):
        longer.load(tone)  # arrays too
    assert longer.load(tone[: 4 * 16000]).shape == (3, 1, 128, 204)
    for bad in ({"max_duration": 0.05}, {"max_amplitude": 0}, {"max_amplitude": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            create_plugin("audio", bad, embed_dim=EMBED)


def test_absurd_amplitudes_are_refused(plugin, tmp_path):
    """1e30 passes every finite check but overflows the fbank's power spectrum: inf features, NaN loss."""
    huge = tmp_path / "huge.wav"
    wave = (0.3 * np.sin(np.arange(3 * 16000) / 7)).astype(np.float32)
    sf.write(huge, wave * np.float32(1e30), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"huge\.wav.*peak amplitude 3e\+29 exceeds max_amplitude 100"):
        plugin.load(huge)
    with pytest.raises(InputError, match=r"shape=\(48000,\).*peak amplitude .* exceeds max_amplitude"):
        plugin.load(wave * 32767)  # int16 PCM values stored as float
    assert torch.isfinite(plugin.load(wave * 3)).all()  # overshoot a little past full scale: fine
    unbounded = create_plugin("audio", {**TINY, "max_amplitude": None}, embed_dim=EMBED)
    with pytest.raises(InputError, match=r"huge\.wav.*log-mel features are not finite"):
        unbounded.load(huge)
    assert torch.isfinite(unbounded.load(wave * 32767)).all()
