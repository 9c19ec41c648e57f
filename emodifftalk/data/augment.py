"""Audio augmentation that makes clean speech look like real recordings.

Usable wherever audio is produced or consumed: ``emodifftalk synth`` writes a share of its clips
augmented (``synth.augment_prob``), so ``pack`` meets the formats real data comes in, and a
training loader can call :func:`augment_audio` on the fly. Each effect is drawn independently:

* channel EQ (off unless ``AugmentSpec.p_eq`` > 0): a microphone/channel's spectral balance, a
  low-shelf biquad (-6..+12 dB below a 300-1200 Hz corner) and a gentle high shelf (-6..+6 dB
  above a 2-6 kHz corner). Real recordings put 90-95 % of their energy below 1 kHz, the
  synthetic world's espeak-ng voices 72 % (README "Why the last files fail").
* level: gain between -18 and +6 dB (peaks clipped like a hot recording)
* band limits: an mp3/telephone-like low-pass (3.4–16 kHz) and a 60–300 Hz high-pass
* reverb: a synthetic room impulse response (exponentially decaying noise, RT60 0.15–0.6 s)
* noise: white/pink/babble-like noise at an SNR of 5–35 dB
* sample rate: resampled to one of 8, 11.025, 16, 22.05, 32, 44.1, 48 kHz (band-limited first)
* stereo: a second channel with a small delay and gain difference
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from emodifftalk.data.audio import resample

SAMPLE_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)


@dataclass(frozen=True)
class AugmentSpec:
    """Probability of each effect and its range."""

    p_band: float = 0.5
    p_reverb: float = 0.4
    p_noise: float = 0.7
    p_resample: float = 0.6
    p_stereo: float = 0.3
    snr_db: tuple[float, float] = (5.0, 35.0)
    gain_db: tuple[float, float] = (-18.0, 6.0)
    rt60_s: tuple[float, float] = (0.15, 0.6)
    # channel EQ: 0 by default, so the synthetic world's augmented clips (synth.augment_prob) and
    # every random stream drawn before it existed stay as they were (drawn only when > 0)
    p_eq: float = 0.0
    eq_low_db: tuple[float, float] = (-6.0, 12.0)
    eq_low_hz: tuple[float, float] = (300.0, 1200.0)
    eq_high_db: tuple[float, float] = (-6.0, 6.0)
    eq_high_hz: tuple[float, float] = (2000.0, 6000.0)


@dataclass
class Augmented:
    audio: np.ndarray  # (N,) mono or (N, 2) stereo float32
    sample_rate: int
    effects: list[str]  # what was applied, in order (stored in meta.json)


def _noise(n: int, sr: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.arange(len(spec)) + 1.0
    if kind == "pink":
        spec /= np.sqrt(f)
    else:  # babble-like: speech-band noise with a slow syllabic envelope
        hz = f / len(f) * sr / 2
        spec *= np.exp(-0.5 * (np.log(hz / 500.0) / 0.8) ** 2)
    out = np.fft.irfft(spec, n)
    if kind == "babble":
        out *= 0.4 + np.abs(np.sin(2 * np.pi * 4.0 * np.arange(n) / sr + rng.uniform(0, 2 * np.pi)))
    return out


def _room_ir(sr: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    ir[0] = 1.0 / 0.3  # direct path dominates the early part
    return ir / np.sqrt(np.sum(ir ** 2))


def shelf_sos(kind: str, corner_hz: float, gain_db: float, sr: int) -> np.ndarray:
    """(1, 6) second-order section of an RBJ-cookbook shelving biquad (slope S = 1): ``kind``
    "low" scales frequencies well below ``corner_hz`` by ``gain_db``, "high" those well above."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * corner_hz / sr
    cw, alpha = np.cos(w0), np.sin(w0) / 2.0 * np.sqrt(2.0)  # S = 1: (A + 1/A)(1/S - 1) + 2 = 2
    k = 2.0 * np.sqrt(a) * alpha
    sign = 1.0 if kind == "low" else -1.0
    b = [a * ((a + 1) - sign * (a - 1) * cw + k), sign * 2 * a * ((a - 1) - sign * (a + 1) * cw),
         a * ((a + 1) - sign * (a - 1) * cw - k)]
    den = [(a + 1) + sign * (a - 1) * cw + k, -sign * 2 * ((a - 1) + sign * (a + 1) * cw),
           (a + 1) + sign * (a - 1) * cw - k]
    return np.array([[*(np.asarray(b) / den[0]), 1.0, den[1] / den[0], den[2] / den[0]]])


def channel_eq_sos(sr: int, low_hz: float, low_db: float, high_hz: float, high_db: float) -> np.ndarray:
    """(2, 6) sections of the channel EQ: a low shelf then a high shelf (corner kept below 0.45 sr)."""
    return np.concatenate([shelf_sos("low", low_hz, low_db, sr),
                           shelf_sos("high", min(high_hz, 0.45 * sr), high_db, sr)])


def augment_audio(audio: np.ndarray, sr: int, rng: np.random.Generator,
                  spec: AugmentSpec = AugmentSpec()) -> Augmented:
    """Augmented copy of mono ``audio`` (N,) at ``sr`` (see the module docstring)."""
    x = np.asarray(audio, dtype=np.float64).copy()
    effects: list[str] = []
    if spec.p_eq > 0 and rng.uniform() < spec.p_eq:  # drawn only when enabled (see AugmentSpec)
        lo_hz, lo_db = rng.uniform(*spec.eq_low_hz), rng.uniform(*spec.eq_low_db)
        hi_hz, hi_db = min(rng.uniform(*spec.eq_high_hz), 0.45 * sr), rng.uniform(*spec.eq_high_db)
        x = sosfilt(channel_eq_sos(sr, lo_hz, lo_db, hi_hz, hi_db), x)
        effects.append(f"eq low {lo_db:+.2f} dB @ {lo_hz:.1f} Hz, high {hi_db:+.2f} dB @ {hi_hz:.1f} Hz")
    if rng.uniform() < spec.p_band:
        lo, hi = rng.uniform(60, 300), min(rng.uniform(3400, 16000), 0.45 * sr)
        x = sosfilt(butter(4, [lo, hi], btype="band", fs=sr, output="sos"), x)
        effects.append(f"band {lo:.0f}-{hi:.0f} Hz")
    if rng.uniform() < spec.p_reverb:
        rt60 = rng.uniform(*spec.rt60_s)
        x = fftconvolve(x, _room_ir(sr, rt60, rng))[: len(x)]
        effects.append(f"reverb rt60 {rt60:.2f} s")
    if rng.uniform() < spec.p_noise:
        kind = str(rng.choice(["white", "pink", "babble"]))
        snr = rng.uniform(*spec.snr_db)
        noise = _noise(len(x), sr, kind, rng)
        p_sig = np.mean(x ** 2) + 1e-12
        x = x + noise * np.sqrt(p_sig / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr / 10))
        effects.append(f"{kind} noise {snr:.0f} dB SNR")
    gain = rng.uniform(*spec.gain_db)
    x = np.clip(x * 10 ** (gain / 20) / max(np.abs(x).max(), 1e-6) * 0.5, -1.0, 1.0)
    effects.append(f"level {gain:+.0f} dB")
    out_sr = sr
    if rng.uniform() < spec.p_resample:
        out_sr = int(rng.choice(SAMPLE_RATES))
        x = resample(x.astype(np.float32), sr, out_sr).astype(np.float64)
        effects.append(f"resampled to {out_sr} Hz")
    if rng.uniform() < spec.p_stereo:
        delay = int(rng.integers(0, max(1, out_sr // 1000)))
        right = np.concatenate([np.zeros(delay), x[: len(x) - delay]]) * 10 ** (rng.uniform(-3, 3) / 20)
        x = np.stack([x, np.clip(right, -1, 1)], axis=1)
        effects.append("stereo")
    return Augmented(audio=x.astype(np.float32), sample_rate=out_sr, effects=effects)
