"""Recordings as spectrogram images: log-mel features against librosa, empty filters, decoding and resampling, fixed
frames, AudioFolderDataModule (classes, normalisation, resume, bad files, SpecAugment, multi-label) and Griffin-Lim,
on WAV and FLAC files written to the test's folder."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("soundfile")
pytest.importorskip("soxr")
librosa = pytest.importorskip("librosa")
import soundfile  # noqa: E402

from mae_lightning.data.audio import (  # noqa: E402
    LOG_FLOOR,
    FixedFrames,
    LogMel,
    ReadSpectrogram,
    SpecAugment,
    mel_filterbank,
    read_audio,
)
from mae_lightning.data.audio_folder import AudioFolderDataModule, NormalizedSpectrogram  # noqa: E402
from mae_lightning.data.datasets import SkipUnreadable, UnreadableImageError  # noqa: E402

SR = 8000
N_MELS, FRAMES = 64, 48
CLASS_HZ = (400.0, 1100.0, 2300.0)  # one tone per class folder 0, 1, 2: the labels are in the sound
# 27, 72 and 117 frames at 8 kHz (25 ms windows, 10 ms hops): padded to 48, cropped from 72 and from 117.
TRAIN_SECONDS = (0.3, 0.75, 1.2)
TEST_SECONDS = 0.5  # 47 frames: one column of silence, on the right
SILENCE = math.log(LOG_FLOOR)


# --------------------------------------------------------------------------- files
def tone(hz: float, seconds: float, sr: int = SR, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """A sine of ``hz`` with a little white noise, float64 in [-1, 1]."""
    t = np.arange(round(seconds * sr)) / sr
    return 0.5 * np.sin(2 * np.pi * hz * t) + noise * np.random.default_rng(seed).standard_normal(t.size)


def chirp(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A linear sweep from 100 Hz to 0.4 sr plus noise: energy in every band, at every level."""
    t = np.arange(round(seconds * sr)) / sr
    f0, f1 = 100.0, 0.4 * sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return 0.5 * np.sin(phase) + 0.02 * np.random.default_rng(seed).standard_normal(t.size)


def write_audio(path: Path, samples: np.ndarray, sr: int = SR) -> Path:
    """(samples,) or (samples, channels) to a 16-bit file; the suffix picks WAV or FLAC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sr, subtype="PCM_16")
    return path


def class_folders(root: Path) -> Path:
    """root/train/<digit>/ (3 recordings per class, WAV and FLAC, 0.3 to 1.2 s) and root/test/<digit>/ (one each)."""
    for label, hz in enumerate(CLASS_HZ):
        for i, seconds in enumerate(TRAIN_SECONDS):
            suffix = ".flac" if i == 1 else ".wav"
            write_audio(root / "train" / str(label) / f"{i}{suffix}", tone(hz, seconds, seed=10 * label + i))
        write_audio(root / "test" / str(label) / "0.wav", tone(hz, TEST_SECONDS, seed=100 + label))
    return root


def datamodule(root: Path, **kwargs) -> AudioFolderDataModule:
    args = dict(img_size=(N_MELS, FRAMES), sample_rate=SR, val_dir="test", batch_size=2, num_workers=0)
    return AudioFolderDataModule(root, **{**args, "pin_memory": False, **kwargs})


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def peak_hz(samples: np.ndarray, sr: int) -> float:
    """The frequency of the largest (Hann-windowed) spectral peak."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sr / len(samples))


@pytest.fixture
def audio_root(tmp_path: Path) -> Path:
    return class_folders(tmp_path / "fsdd")


# --------------------------------------------------------------------------- 1. features against librosa
def test_default_window_hop_and_fft_at_8_khz():
    features = LogMel(sample_rate=SR, n_mels=N_MELS)
    assert (features.win_length, features.hop_length, features.fft_size) == (200, 80, 256)
    assert LogMel(sample_rate=16000).fft_size == 512 and LogMel(sample_rate=16000, n_fft=1024).fft_size == 1024


# An odd n_fft: its bins lie at k * sr / n_fft and stop short of sr / 2.
@pytest.mark.parametrize("sr, n_mels, n_fft", [(8000, 64, None), (16000, 128, 1024), (8000, 40, 255)])
def test_log_mel_equals_librosa_within_1e_3_float32_against_float64(sr, n_mels, n_fft):
    features = LogMel(sample_rate=sr, n_mels=n_mels, n_fft=n_fft)
    samples = chirp(1.3, sr).astype(np.float32)
    ours = features(torch.from_numpy(samples))
    assert ours.dtype == torch.float32
    frames = 1 + (samples.size - features.fft_size) // features.hop_length
    assert ours.shape == (n_mels, frames)
    power = librosa.feature.melspectrogram(
        y=samples.astype(np.float64), sr=sr, n_fft=features.fft_size, hop_length=features.hop_length,
        win_length=features.win_length, window="hann", center=False, power=2.0, n_mels=n_mels, fmin=20,
        fmax=sr / 2, htk=True, norm=None,
    )  # fmt: skip
    reference = np.log(power + LOG_FLOOR)
    assert reference.shape == ours.shape
    assert np.abs(ours.double().numpy() - reference).max() < 1e-3  # float32 features against float64 librosa
    filters = mel_filterbank(n_mels, features.fft_size, sr, 20.0)
    expected = librosa.filters.mel(sr=sr, n_fft=features.fft_size, n_mels=n_mels, fmin=20, fmax=sr / 2, htk=True,
                                   norm=None)  # fmt: skip
    assert filters.shape == (n_mels, features.fft_size // 2 + 1)
    np.testing.assert_allclose(filters.numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(features.filters(), filters)


def test_a_recording_shorter_than_one_fft_is_one_frame():
    features = LogMel(sample_rate=SR, n_mels=N_MELS)
    out = features(torch.from_numpy(tone(440, 0.01).astype(np.float32)))  # 80 samples < 256
    assert out.shape == (N_MELS, 1) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- 2. empty filters
def test_empty_mel_filters_are_refused_in_one_line_with_the_fixes(audio_root):
    message = r"n_mels=128 .*n_fft=256 at 8000 Hz: use fewer mel bins, a larger n_fft, or a higher sample_rate"
    with pytest.raises(ValueError, match=message) as err:
        LogMel(sample_rate=SR, n_mels=128).filters()
    one_line(err)
    with pytest.warns(UserWarning, match="Empty filters"):  # librosa agrees that some are empty
        librosa.filters.mel(sr=SR, n_fft=256, n_mels=128, fmin=20, htk=True, norm=None)
    LogMel(sample_rate=SR, n_mels=128, n_fft=1024).filters()  # a finer FFT fills them
    with pytest.raises(ValueError, match=message) as err:
        datamodule(audio_root, img_size=(128, 96))
    one_line(err)


# --------------------------------------------------------------------------- 3. decoding and resampling
def test_resampling_halves_the_samples_and_keeps_the_tone(tmp_path):
    path = write_audio(tmp_path / "tone16k.wav", tone(1000.0, 1.0, sr=16000, noise=0.0), sr=16000)
    native = read_audio(str(path), 16000)
    assert native.dtype == torch.float32 and native.ndim == 1 and native.numel() == 16000
    np.testing.assert_array_equal(native.numpy(), soundfile.read(path, dtype="float32")[0])  # no resampling
    half = read_audio(str(path), 8000)
    assert half.dtype == torch.float32 and half.ndim == 1
    assert abs(half.numel() - 8000) <= 4
    assert abs(peak_hz(half.numpy(), 8000) - 1000.0) <= 2.0
    assert abs(peak_hz(native.numpy(), 16000) - 1000.0) <= 2.0


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(500.0, 0.8, noise=0.0), 0.5 * tone(1500.0, 0.8, noise=0.0)
    path = write_audio(tmp_path / "stereo.flac", np.stack([left, right], axis=1))
    mono = read_audio(str(path), SR)
    assert mono.ndim == 1 and mono.numel() == left.size
    stored = soundfile.read(path, dtype="float32")[0]
    np.testing.assert_allclose(mono.numpy(), stored.mean(axis=1), rtol=0, atol=1e-7)
    np.testing.assert_allclose(mono.numpy(), (left + right) / 2, rtol=0, atol=2 / 32768)  # 16-bit rounding
    spectrum = np.abs(np.fft.rfft(mono.numpy()))
    bins = np.argsort(spectrum)[-2:] * SR / mono.numel()
    assert sorted(np.round(bins)) == [500.0, 1500.0]  # both channels are in it


# --------------------------------------------------------------------------- 4. fixed frames
def test_centred_crop_and_pad_are_exact():
    long = torch.randn(1, 8, 30)
    assert torch.equal(FixedFrames(20, random=False)(long), long[..., 5:25])
    assert torch.equal(FixedFrames(21, random=False)(long), long[..., 4:25])
    assert torch.equal(FixedFrames(30, random=False)(long), long)
    short = torch.randn(1, 8, 11)
    out = FixedFrames(16, random=False)(short)  # 5 columns of silence: 2 on the left, 3 on the right
    assert out.shape == (1, 8, 16)
    assert torch.equal(out[..., 2:13], short)
    assert torch.equal(out[..., :2], torch.full((1, 8, 2), SILENCE))
    assert torch.equal(out[..., 13:], torch.full((1, 8, 3), SILENCE))
    assert torch.equal(FixedFrames(15, random=False)(short)[..., 2:13], short)  # even slack: 2 and 2


def test_random_crop_is_a_contiguous_slice_and_random_pad_places_the_recording():
    long, short = torch.randn(1, 8, 30), torch.randn(1, 8, 11)
    crops, places = set(), set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = FixedFrames(20, random=True)(long)
        assert out.shape == (1, 8, 20)
        offsets = [o for o in range(11) if torch.equal(out, long[..., o : o + 20])]
        assert len(offsets) == 1
        crops.add(offsets[0])
        torch.manual_seed(seed)
        again = FixedFrames(20, random=True)(long)
        assert torch.equal(out, again)  # drawn from the seeded global generator
        out = FixedFrames(16, random=True)(short)
        assert out.shape == (1, 8, 16)
        offsets = [o for o in range(6) if torch.equal(out[..., o : o + 11], short)]
        assert len(offsets) == 1
        offset = offsets[0]
        rest = torch.cat([out[..., :offset], out[..., offset + 11 :]], dim=-1)
        assert torch.equal(rest, torch.full((1, 8, 5), SILENCE))
        places.add(offset)
    assert len(crops) > 3 and len(places) > 2  # the place varies with the seed


# --------------------------------------------------------------------------- 5. the DataModule
def test_datamodule_classes_batches_and_computed_normalisation(audio_root):
    dm = datamodule(audio_root)
    assert dm.num_classes == 3 and dm.classes == ["0", "1", "2"]
    dm.setup("fit")
    assert dm.mean is None and dm.std is None  # not before a loader is made
    loader = dm.train_dataloader()
    assert len(dm.mean) == 1 and len(dm.std) == 1
    # AST's dataset normalisation: one mean and std over every frame of the whole training recordings.
    read = ReadSpectrogram(dm.features)
    train_paths = sorted(str(p) for p in (audio_root / "train").rglob("*") if p.is_file())
    frames = torch.cat([read(path).double().flatten() for path in train_paths])
    assert dm.mean[0] == pytest.approx(frames.mean().item(), rel=1e-9)
    assert dm.std[0] == pytest.approx(frames.std(unbiased=False).item(), rel=1e-9)

    batches = list(loader)
    assert len(batches) == 4  # 9 recordings, batches of 2, the last dropped
    silence = (torch.full((1,), SILENCE) - torch.tensor(dm.mean)) / torch.tensor(dm.std)
    own, padded = [], 0
    for images, targets in batches:
        assert images.shape == (2, 1, N_MELS, FRAMES) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and targets.shape == (2,)
        assert torch.isfinite(images).all()
        is_silence = (images == silence).all(dim=-2, keepdim=True)  # (N, 1, 1, frames)
        padded += int(is_silence.sum())
        own.append(images.masked_select(~is_silence.expand_as(images)))
    assert padded > 0  # the 0.3 s recordings are padded with silence
    own = torch.cat(own)
    assert abs(own.mean().item()) < 0.3 and 0.5 < own.std().item() < 2.0

    # The labels are in the sound: each class's tone is loudest in its own mel band.
    loudest = [int(read(str(audio_root / "test" / str(c) / "0.wav"))[0].mean(dim=-1).argmax()) for c in range(3)]
    assert loudest[0] < loudest[1] < loudest[2]
    for images, targets in batches:
        assert images[:, 0].mean(dim=-1).argmax(dim=-1).tolist() == [loudest[t] for t in targets.tolist()]
    val = list(dm.val_dataloader())
    assert [images.shape[0] for images, _ in val] == [2, 1]
    assert torch.cat([targets for _, targets in val]).tolist() == [0, 1, 2]
    for images, targets in val:
        assert images.shape[1:] == (1, N_MELS, FRAMES)
        assert images[:, 0].mean(dim=-1).argmax(dim=-1).tolist() == [loudest[t] for t in targets.tolist()]
        # 47 frames centred in 48: the extra column of silence on the right.
        assert torch.equal(images[..., -1], silence.expand_as(images[..., -1]))
        assert not (images[..., 0] == silence).all()


def test_stored_statistics_are_restored_without_recomputing(audio_root, monkeypatch):
    dm = datamodule(audio_root, seed=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    state = dm.state_dict()
    assert state["mean"] == list(dm.mean) and state["std"] == list(dm.std)

    def no_recomputing(*args, **kwargs):
        raise AssertionError("the statistics were computed again")

    monkeypatch.setattr("mae_lightning.data.base.band_statistics", no_recomputing)
    restored = datamodule(audio_root, seed=0)
    restored.setup("fit")
    restored.load_state_dict(state)
    assert restored.mean == dm.mean and restored.std == dm.std
    again = list(restored.train_dataloader())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))


def test_given_mean_and_std_are_used_as_given(audio_root, monkeypatch):
    monkeypatch.setattr("mae_lightning.data.base.band_statistics", None)  # never called
    dm = datamodule(audio_root, mean=(-5.0,), std=(2.0,))
    dm.setup("fit")
    dm.load_state_dict({"seed": 0, "epoch": 0, "batches_done": 0, "mean": [0.0], "std": [1.0]})
    images, _ = next(iter(dm.val_dataloader()))
    assert dm.mean == (-5.0,) and dm.std == (2.0,)
    read = ReadSpectrogram(dm.features)
    expected = (FixedFrames(FRAMES, random=False)(read(str(audio_root / "test" / "0" / "0.wav"))) + 5.0) / 2.0
    torch.testing.assert_close(images[0], expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- 6. resume mid-epoch
def test_a_resumed_epoch_yields_exactly_the_batches_left(audio_root):
    settings = dict(augmentation="finetune", spec_augment=(8, 10))
    dm = datamodule(audio_root, seed=7, **settings)
    dm.setup("fit")
    epoch = list(dm.train_dataloader())
    assert len(epoch) == 4
    again = list(dm.train_dataloader())  # same seed, same epoch: the same crops, pads and masks
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch, again, strict=True))
    other = datamodule(audio_root, seed=8, **settings, mean=dm.mean, std=dm.std)
    other.setup("fit")
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(epoch, other.train_dataloader(), strict=True))

    resumed = datamodule(audio_root, seed=0, **settings)
    resumed.setup("fit")
    resumed.load_state_dict({"seed": 7, "epoch": 0, "batches_done": 2, "mean": list(dm.mean), "std": list(dm.std)})
    rest = list(resumed.train_dataloader())
    assert len(rest) == 2
    for (images, targets), (expected_images, expected_targets) in zip(rest, epoch[2:], strict=True):
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    # Only the interrupted epoch starts late; the next loader reads the whole epoch again.
    assert len(list(resumed.train_dataloader())) == 4


# --------------------------------------------------------------------------- 7. bad files
def bad_files(folder: Path) -> list[Path]:
    """An empty file, random bytes named .wav, and a valid WAV with no samples."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "0" / "0_empty.wav"  # sorts first: the check when made reads on to a good one
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    noise = folder / "1" / "noise.wav"
    noise.parent.mkdir(parents=True, exist_ok=True)
    noise.write_bytes(np.random.default_rng(0).bytes(3000))
    silent = write_audio(folder / "1" / "silent.wav", np.zeros(0))
    return [empty, noise, silent]


def test_read_audio_says_why_a_file_is_unreadable(tmp_path):
    empty, noise, silent = bad_files(tmp_path)
    for path, reason in ((empty, "LibsndfileError"), (noise, "LibsndfileError"), (silent, "holds no samples")):
        with pytest.raises(UnreadableImageError, match=re.escape(f"{path}: ") + f".*{reason}") as err:
            read_audio(str(path), SR)
        assert err.value.path == str(path)
        one_line(err)


def test_bad_audio_files_are_skipped_named_and_counted(tmp_path):
    root = tmp_path / "data"
    bad = bad_files(root / "train")
    for label, count in ((0, 3), (1, 2)):  # 5 good + 3 bad: 4 whole batches of 2, every file read
        for i in range(count):
            write_audio(root / "train" / str(label) / f"good{i}.wav", tone(CLASS_HZ[label], 0.4 + 0.2 * i, seed=i))
    for label in (0, 1):
        write_audio(root / "test" / str(label) / "0.wav", tone(CLASS_HZ[label], 0.5))
    dm = datamodule(root, max_bad_image_fraction=0.5)
    dm.setup("fit")
    skipping = dm.train_set
    assert isinstance(skipping, SkipUnreadable) and len(skipping) == 8
    with pytest.warns(UserWarning) as record:
        batches = list(dm.train_dataloader())
    assert len(batches) == 4
    for images, _ in batches:
        assert images.shape == (2, 1, N_MELS, FRAMES) and torch.isfinite(images).all()
    named = sorted(
        str(w.message).split("skipping unreadable audio ")[1].split(": ")[0]
        for w in record
        if "skipping unreadable audio" in str(w.message)
    )
    assert named == sorted(map(str, bad))
    assert skipping.num_skipped == 3
    flagged = {Path(skipping.samples[i][0]) for i in torch.nonzero(skipping.bad).flatten().tolist()}
    assert flagged == set(bad)


def test_a_folder_of_only_bad_files_stops_when_made(tmp_path):
    root = tmp_path / "data"
    bad_files(root / "train")
    with pytest.raises(ValueError, match=r"none of the 3 audio files under .*train.* can be read \(first: .*0_empty"):
        datamodule(root)
    with pytest.raises(ValueError, match=r"none of the 3 audio files") as err:
        datamodule(root)
    one_line(err)


def test_more_than_one_channel_is_refused_in_one_line(audio_root):
    with pytest.raises(ValueError, match=r"in_chans must be 1, got 3") as err:
        datamodule(audio_root, in_chans=3)
    one_line(err)


# --------------------------------------------------------------------------- 8. SpecAugment
def bands(zero: torch.Tensor) -> tuple[list[int], list[int]]:
    """The rows and columns of a (n_mels, frames) mask that are zero throughout."""
    return zero.all(dim=1).nonzero().flatten().tolist(), zero.all(dim=0).nonzero().flatten().tolist()


def contiguous(indices: list[int]) -> bool:
    return indices == list(range(indices[0], indices[0] + len(indices))) if indices else True


def test_spec_augment_masks_one_band_of_rows_and_one_of_frames_in_training_only(audio_root):
    dm = datamodule(audio_root, augmentation="finetune", spec_augment=(8, 10))
    dm.setup("fit")
    dm.resolve_statistics()
    train = dm.train_transform
    assert isinstance(train, NormalizedSpectrogram) and isinstance(train.spec_augment, SpecAugment)
    plain = NormalizedSpectrogram(train.frames, train.normalize)  # the same draws, without the masks
    read = ReadSpectrogram(dm.features)
    widths = set()
    for path, _ in dm.train_set.samples[:3]:  # a 0.3 s (padded), a 0.75 s and a 1.2 s recording (cropped)
        spectrogram = read(path)
        for seed in range(8):
            torch.manual_seed(seed)
            masked = train(spectrogram)
            torch.manual_seed(seed)
            unmasked = plain(spectrogram)
            assert masked.shape == (1, N_MELS, FRAMES)
            zero = masked[0] == 0
            rows, columns = bands(zero)
            assert len(rows) <= 7 and len(columns) <= 9
            assert contiguous(rows) and contiguous(columns)
            covered = torch.zeros_like(zero)
            covered[rows] = True
            covered[:, columns] = True
            assert torch.equal(zero, covered)  # nothing else is zero ...
            assert torch.equal(masked[~covered[None]], unmasked[~covered[None]])  # ... or changed
            assert (unmasked != 0).all()
            widths.add((len(rows), len(columns)))
    assert len({r for r, _ in widths}) > 2 and len({c for _, c in widths}) > 2  # the widths are drawn
    assert max(r for r, _ in widths) > 0 and max(c for _, c in widths) > 0
    assert dm.eval_transform.spec_augment is None
    for images, _ in dm.val_dataloader():
        assert (images != 0).all()  # evaluation is never masked
    with pytest.raises(ValueError, match=r"mask widths must be >= 0"):
        SpecAugment(-1, 4)
    x = torch.randn(1, 8, 12)
    assert torch.equal(SpecAugment(0, 0)(x), x)


def test_pretraining_has_no_spec_augment(audio_root):
    dm = datamodule(audio_root, spec_augment=(8, 10))  # augmentation="pretrain"
    dm.setup("fit")
    assert dm.train_transform.spec_augment is None
    for images, _ in dm.train_dataloader():
        assert (images != 0).all()


# --------------------------------------------------------------------------- 9. multi-label
LABELS = {
    "train/a.wav": "dog;bird",
    "train/b.wav": "cat",
    "train/c.flac": "bird",
    "train/d.wav": "cat;dog;bird",
    "test/e.wav": "dog",
    "test/f.wav": "cat;bird",
}
CLASSES = ["bird", "cat", "dog"]


def multilabel_root(root: Path, rows: dict[str, str]) -> Path:
    for i, name in enumerate(LABELS):
        write_audio(root / name, tone(CLASS_HZ[i % 3], 0.4 + 0.1 * i, seed=i))
    lines = ["file,labels", *(f"{name},{labels}" for name, labels in rows.items())]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def multi_hot(names: str) -> torch.Tensor:
    return torch.tensor([float(c in names.split(";")) for c in CLASSES])


def test_multi_label_csv_gives_multi_hot_float_targets(tmp_path):
    root = multilabel_root(tmp_path / "data", LABELS)
    dm = datamodule(root, labels_file=str(root / "labels.csv"))
    assert dm.classes == CLASSES and dm.num_classes == 3
    dm.setup("fit")
    dm.resolve_statistics()
    for index, (path, _) in enumerate(dm.train_set.samples):
        _, target = dm.train_set[index]
        assert target.dtype == torch.float32
        assert torch.equal(target, multi_hot(LABELS[Path(path).relative_to(root).as_posix()]))
    for images, targets in dm.train_dataloader():
        assert images.shape == (2, 1, N_MELS, FRAMES)
        assert targets.shape == (2, 3) and targets.dtype == torch.float32
    images, targets = next(iter(dm.val_dataloader()))
    assert torch.equal(targets, torch.stack([multi_hot(LABELS["test/e.wav"]), multi_hot(LABELS["test/f.wav"])]))


def test_a_recording_missing_from_the_csv_stops_when_made(tmp_path):
    rows = {name: labels for name, labels in LABELS.items() if name != "test/f.wav"}
    root = multilabel_root(tmp_path / "data", rows)
    missing = r"1 recording\(s\) have no row in .*labels\.csv \(first: .*test/f\.wav\)"
    with pytest.raises(ValueError, match=missing) as err:
        datamodule(root, labels_file=str(root / "labels.csv"))
    one_line(err)


# --------------------------------------------------------------------------- 10. Griffin-Lim
def test_griffin_lim_brings_back_the_tone():
    features = LogMel(sample_rate=SR, n_mels=N_MELS)
    samples = tone(440.0, 0.6, noise=0.0).astype(np.float32)
    log_mel = features(torch.from_numpy(samples))
    audio = features.to_audio(log_mel, n_iter=16)
    assert isinstance(audio, np.ndarray) and np.issubdtype(audio.dtype, np.floating) and audio.ndim == 1
    # Same rate: the frames span as many samples as they were made from.
    assert audio.size == features.fft_size + features.hop_length * (log_mel.shape[1] - 1)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert abs(peak_hz(audio, SR) - 440.0) <= 30.0
