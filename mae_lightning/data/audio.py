"""Sound as images: decoding audio files, log-mel filterbanks computed with torch, fixed-length spectrograms.

A recording becomes a one-channel image ``(1, n_mels, frames)``: frequency down the rows (row 0 the lowest mel band),
time across the columns, 10 ms per column by default, as Audio-MAE and AST feed their ViTs. The features are the
log of a mel-filtered power spectrogram (``torch.stft`` with a periodic Hann window, HTK mel scale, triangular
filters without area normalisation), equal to ``librosa.feature.melspectrogram(..., htk=True, norm=None,
center=False)`` within float32 rounding (tested). Files are decoded with soundfile (WAV, FLAC, OGG, ...), mixed down
to mono and resampled with soxr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mae_lightning.data.datasets import UnreadableImageError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
# The floor of the log: the level of silence (and of the frames that pad a short recording).
LOG_FLOOR = 1e-6


def hz_to_mel(hz: Tensor | float) -> Tensor:
    """HTK's mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None
) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, centres evenly spaced on the HTK mel scale, peak 1.

    Raises:
        ValueError: a filter covers no frequency bin (too many mel bands for the frequency resolution), naming the
            settings that fix it.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, {sample_rate} Hz"
        )
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64))
    # The frequencies of torch.stft's bins, k * sample_rate / n_fft (an odd n_fft does not reach sample_rate / 2).
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    empty = (filters.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{len(empty)} of the n_mels={n_mels} mel filters cover no frequency bin (first: filter {empty[0]}) with "
            f"n_fft={n_fft} at {sample_rate} Hz: use fewer mel bins, a larger n_fft, or a higher sample_rate"
        )
    return filters.float()


@dataclass(frozen=True)
class LogMel:
    """Log-mel features of a waveform, and back (Griffin-Lim) for listening.

    Args:
        sample_rate: the rate every recording is resampled to.
        n_mels: mel bands (the spectrogram's height).
        win_ms: analysis window in milliseconds (25: AST and Audio-MAE).
        hop_ms: hop between frames in milliseconds (10).
        n_fft: FFT size; None: the window's length rounded up to a power of two (Kaldi's choice).
        f_min: lowest frequency of the filters, in Hz.
        f_max: highest frequency, in Hz; None: half the sample rate.
    """

    sample_rate: int = 16000
    n_mels: int = 128
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    f_min: float = 20.0
    f_max: float | None = None

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def fft_size(self) -> int:
        return self.n_fft if self.n_fft is not None else 2 ** math.ceil(math.log2(self.win_length))

    def filters(self) -> Tensor:
        """:func:`mel_filterbank` of these settings (raises when a filter would be empty)."""
        return mel_filterbank(self.n_mels, self.fft_size, self.sample_rate, self.f_min, self.f_max)

    def __call__(self, waveform: Tensor, filters: Tensor | None = None) -> Tensor:
        """waveform (samples,) float -> log-mel (n_mels, frames), ``1 + (samples - n_fft) // hop`` frames (a
        recording shorter than one FFT is padded with silence to one frame)."""
        n_fft = self.fft_size
        if waveform.shape[-1] < n_fft:
            waveform = torch.nn.functional.pad(waveform, (0, n_fft - waveform.shape[-1]))
        window = torch.hann_window(self.win_length, periodic=True, dtype=waveform.dtype)
        spectrum = torch.stft(
            waveform, n_fft, self.hop_length, self.win_length, window, center=False, return_complex=True
        )
        power = spectrum.real**2 + spectrum.imag**2
        filters = self.filters() if filters is None else filters
        return torch.log(filters.to(power.dtype) @ power + LOG_FLOOR)

    def to_audio(self, log_mel: Tensor, n_iter: int = 32) -> np.ndarray:
        """log-mel (n_mels, frames) -> a waveform at ``sample_rate``, by Griffin-Lim (librosa): for listening only,
        the phase is estimated."""
        import librosa

        power = np.maximum(np.exp(log_mel.detach().double().cpu().numpy()) - LOG_FLOOR, 0.0)
        return librosa.feature.inverse.mel_to_audio(
            power, sr=self.sample_rate, n_fft=self.fft_size, hop_length=self.hop_length, win_length=self.win_length,
            window="hann", center=False, power=2.0, n_iter=n_iter, htk=True, norm=None, fmin=self.f_min,
            fmax=self.f_max if self.f_max is not None else self.sample_rate / 2,
        )  # fmt: skip


def read_audio(path: str, sample_rate: int) -> Tensor:
    """An audio file as a mono float32 waveform at ``sample_rate``: channels averaged, resampled with soxr.

    Raises:
        UnreadableImageError: soundfile cannot read the file, or it holds no samples.
    """
    import soundfile

    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, soundfile.LibsndfileError) as err:
        raise UnreadableImageError(path, f"{type(err).__name__}: {err}") from err
    if samples.shape[0] == 0:
        raise UnreadableImageError(path, "the recording holds no samples")
    mono = samples.mean(axis=1)
    if rate != sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, sample_rate).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono))


class ReadSpectrogram:
    """Loader: an audio file to its whole log-mel spectrogram, (1, n_mels, frames) float32 (``LogMel``)."""

    def __init__(self, features: LogMel) -> None:
        self.features = features
        self.filters = features.filters()

    def __call__(self, path: str) -> Tensor:
        return self.features(read_audio(path, self.features.sample_rate), self.filters)[None]


class FixedFrames:
    """Crop or pad a spectrogram (C, n_mels, T) to ``frames`` columns: at random in training, centred in evaluation.

    Padding is silence (``log(LOG_FLOOR)``), placed around the recording; a random crop or placement draws from the
    global torch generator (seeded per sample by the DataModule, so resumed epochs repeat it).
    """

    def __init__(self, frames: int, random: bool) -> None:
        self.frames = frames
        self.random = random

    def __call__(self, spectrogram: Tensor) -> Tensor:
        length = spectrogram.shape[-1]
        slack = abs(length - self.frames)
        offset = int(torch.randint(slack + 1, ()).item()) if self.random else slack // 2
        if length >= self.frames:
            return spectrogram[..., offset : offset + self.frames]
        pad = (offset, slack - offset)
        return torch.nn.functional.pad(spectrogram, pad, value=math.log(LOG_FLOOR))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(frames={self.frames}, random={self.random})"


class SpecAugment:
    """SpecAugment's masking (Park et al. 2019), as torchaudio's ``FrequencyMasking`` / ``TimeMasking`` in AST: one
    band of ``[0, freq_mask)`` mel bins and one of ``[0, time_mask)`` frames, at random places, set to 0 (the mean,
    after normalisation). Draws from the global torch generator."""

    def __init__(self, freq_mask: int, time_mask: int) -> None:
        if freq_mask < 0 or time_mask < 0:
            raise ValueError(f"SpecAugment's mask widths must be >= 0, got {freq_mask}, {time_mask}")
        self.freq_mask = freq_mask
        self.time_mask = time_mask

    def __call__(self, spectrogram: Tensor) -> Tensor:
        spectrogram = spectrogram.clone()
        for axis, width in ((-2, self.freq_mask), (-1, self.time_mask)):
            size = spectrogram.shape[axis]
            masked = int(torch.randint(min(width, size + 1), ()).item()) if width > 0 else 0
            start = int(torch.randint(size - masked + 1, ()).item())
            spectrogram.narrow(axis, start, masked).zero_()
        return spectrogram

    def __repr__(self) -> str:
        return f"{type(self).__name__}(freq_mask={self.freq_mask}, time_mask={self.time_mask})"
