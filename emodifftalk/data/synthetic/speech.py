"""Phone-timed synthetic speech and the AU tracks that go with it.

Audio: a random phone sequence (12 classes incl. silence) rendered as a harmonic source shaped by
per-phone formants (vowels, nasals) plus band-limited noise (fricatives, stop bursts), with an
amplitude envelope, identity pitch/formant scale and emotion-dependent pitch/energy/tempo.

AUs, per video frame:
* mouth AUs (AU10 12 14 15 17 23 24 25 26) are a deterministic function of the phone sequence:
  per-phone targets, anticipated by 20 ms, smoothed (co-articulation, σ = 35 ms) and, for the
  opening AUs 25/26, scaled by the local loudness. An audio model can learn them.
* emotion AUs follow the clip's emotion label (FACS prototypes) with slow variation, ramping in
  after the leading silence; they mix with the mouth AUs as ``1 - (1 - a)(1 - b)``.
* AU45 blinks at random times.
* conversational gestures (``gestures=True``, the default): some vowels carry a pitch accent
  (higher f0, louder) and most accents come with an eyebrow flash (AU01 + AU02 rising just
  before the vowel), as brows and pitch accents go together in real speech; plus short
  expression events of single AUs at random times (frowns, squints, smiles, lip pulls) that
  nothing in the audio predicts. Without them each upper-face AU only ever moves with its
  emotion label, and a data set of a few dozen clips never shows most AUs on their own — a motion
  model trained on it cannot learn what editing one AU should do.
Every clip starts with ``lead`` seconds of silence and all AUs 0: frame 0 is a neutral face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, uniform_filter1d
from scipy.signal import butter, sosfilt

from emodifftalk.au import AU_INDEX, NUM_AUS

from .head import Voice

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised", "disgusted", "fearful")

# FACS prototypes (fear uses 25 instead of 20, which is not one of the 17).
EMOTION_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"AU06": 0.7, "AU12": 0.8},
    "sad": {"AU01": 0.7, "AU04": 0.6, "AU15": 0.6},
    "angry": {"AU04": 0.8, "AU05": 0.5, "AU07": 0.7, "AU23": 0.6},
    "surprised": {"AU01": 0.8, "AU02": 0.8, "AU05": 0.7, "AU26": 0.5},
    "disgusted": {"AU09": 0.8, "AU10": 0.6, "AU15": 0.4},
    "fearful": {"AU01": 0.7, "AU02": 0.6, "AU04": 0.5, "AU05": 0.7, "AU25": 0.4},
}


@dataclass(frozen=True)
class EmotionVoice:
    pitch: float  # f0 factor
    energy: float  # loudness factor
    pitch_range: float  # intonation depth factor
    tempo: float  # speaking-rate factor
    tremor: float  # relative f0 vibrato depth at 6 Hz


EMOTION_VOICE: dict[str, EmotionVoice] = {
    "neutral": EmotionVoice(1.00, 1.00, 1.0, 1.00, 0.0),
    "happy": EmotionVoice(1.15, 1.15, 1.5, 1.05, 0.0),
    "sad": EmotionVoice(0.90, 0.70, 0.6, 0.85, 0.0),
    "angry": EmotionVoice(1.05, 1.40, 1.2, 1.10, 0.0),
    "surprised": EmotionVoice(1.25, 1.20, 1.7, 1.00, 0.0),
    "disgusted": EmotionVoice(0.95, 0.90, 0.9, 0.95, 0.0),
    "fearful": EmotionVoice(1.20, 0.90, 1.3, 1.15, 0.03),
}


@dataclass(frozen=True)
class Phone:
    name: str
    kind: str  # "sil" | "vowel" | "nasal" | "stop" | "fric"
    formants: tuple[float, float, float]  # Hz (adult male-ish; scaled by Voice.formant_scale)
    voice_amp: float
    noise_band: tuple[float, float] | None
    noise_amp: float
    dur_ms: tuple[float, float]
    aus: dict[str, float]  # mouth AU targets while this phone is produced


PHONES: tuple[Phone, ...] = (
    Phone("sil", "sil", (500, 1500, 2500), 0.0, None, 0.0, (80, 250), {}),
    Phone("a", "vowel", (750, 1200, 2550), 1.00, None, 0.0, (90, 200), {"AU25": 0.85, "AU26": 0.70}),
    Phone("e", "vowel", (500, 1850, 2550), 0.90, None, 0.0, (80, 180),
          {"AU25": 0.60, "AU26": 0.35, "AU12": 0.25}),
    Phone("i", "vowel", (300, 2250, 3000), 0.80, None, 0.0, (70, 160),
          {"AU25": 0.40, "AU26": 0.10, "AU12": 0.55, "AU10": 0.20, "AU14": 0.15}),
    Phone("o", "vowel", (500, 900, 2450), 0.90, None, 0.0, (90, 200),
          {"AU25": 0.60, "AU26": 0.45, "AU23": 0.45}),
    Phone("u", "vowel", (320, 800, 2300), 0.75, None, 0.0, (80, 180),
          {"AU25": 0.30, "AU26": 0.10, "AU23": 0.70, "AU17": 0.25}),
    Phone("m", "nasal", (280, 1100, 2300), 0.35, None, 0.0, (60, 120),
          {"AU24": 0.70, "AU23": 0.30, "AU17": 0.30}),
    Phone("p", "stop", (500, 1500, 2500), 0.0, (500, 7000), 0.15, (60, 110),
          {"AU24": 0.80, "AU23": 0.20, "AU17": 0.20}),
    Phone("f", "fric", (500, 1500, 2500), 0.0, (1500, 7500), 0.05, (80, 150),
          {"AU10": 0.40, "AU17": 0.35, "AU25": 0.20}),
    Phone("s", "fric", (500, 1500, 2500), 0.0, (4000, 7800), 0.12, (80, 170),
          {"AU25": 0.30, "AU12": 0.30, "AU14": 0.25, "AU26": 0.05}),
    Phone("sh", "fric", (500, 1500, 2500), 0.0, (2000, 4500), 0.12, (80, 160),
          {"AU23": 0.50, "AU25": 0.35, "AU10": 0.30}),
    Phone("t", "stop", (500, 1500, 2500), 0.0, (3000, 7000), 0.12, (60, 100),
          {"AU25": 0.30, "AU26": 0.15, "AU15": 0.10}),
)
PHONE_INDEX = {p.name: i for i, p in enumerate(PHONES)}
_VOWELS = [i for i, p in enumerate(PHONES) if p.kind == "vowel"]
_ONSETS = [PHONE_INDEX[n] for n in ("m", "p", "f", "s", "sh", "t")]
_CODAS = [PHONE_INDEX[n] for n in ("m", "s", "t")]

CONTROL_RATE = 200.0  # Hz, AU trajectories are built at this rate, then sampled at fps
ACCENT_PROB = 0.3  # share of vowels (after the lead silence) with a pitch accent
ACCENT_F0, ACCENT_GAIN = 0.18, 0.35  # peak relative f0 rise and loudness gain of an accent
BROW_FLASH_PROB = 0.7  # accents that come with an eyebrow flash
GESTURE_RATE = 0.35  # other expression events per second
GESTURE_AUS = ("AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23")
ANTICIPATION_S = 0.02  # lips move slightly before the sound
COARTICULATION_SIGMA_S = 0.035
_FORMANT_BW = (90.0, 110.0, 150.0)
_FORMANT_GAIN = (1.0, 0.55, 0.3)


@dataclass
class SpeechClip:
    """audio (N,) float32 at sr; aus (T, 17) float32 in [0, 1]; phones [(name, start_s, end_s)];
    envelope (T,) loudness proxy per frame; emotion + intensity; blinks [start_s]."""

    audio: np.ndarray
    aus: np.ndarray
    phones: list[tuple[str, float, float]]
    envelope: np.ndarray
    emotion: str
    intensity: float
    blinks: list[float]


def clip_lengths(seconds: float, sr: int, fps: float) -> tuple[int, int]:
    """(T frames, N samples): T = round(seconds * fps), N = round(T / fps * sr)."""
    t = int(round(seconds * fps))
    return t, int(round(t / fps * sr))


def sample_phones(seconds: float, rng: np.random.Generator, rate: float = 1.0,
                  lead: float = 0.3) -> list[tuple[int, float, float]]:
    """Phone segments ``(phone index, start, end)`` covering [0, seconds): silence, then words."""
    segs = [(PHONE_INDEX["sil"], 0.0, lead)]
    t = lead

    def add(idx: int) -> None:
        nonlocal t
        lo, hi = PHONES[idx].dur_ms
        dur = rng.uniform(lo, hi) / 1000.0 / rate
        segs.append((idx, t, t + dur))
        t += dur

    while t < seconds:
        for _ in range(int(rng.integers(1, 4))):  # syllables per word
            if rng.uniform() < 0.7:
                add(int(rng.choice(_ONSETS)))
            add(int(rng.choice(_VOWELS)))
            if rng.uniform() < 0.3:
                add(int(rng.choice(_CODAS)))
        if rng.uniform() < 0.35:
            add(PHONE_INDEX["sil"])
    out = []
    for idx, s, e in segs:
        if s >= seconds:
            break
        out.append((idx, s, min(e, seconds)))
    return out


def _per_sample(segs, times):
    """Phone index and relative position inside the phone for each time (N,)."""
    starts = np.array([s for _, s, _ in segs])
    ends = np.array([e for _, _, e in segs])
    idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(segs) - 1)
    ph = np.array([p for p, _, _ in segs])[idx]
    pos = np.clip((times - starts[idx]) / np.maximum(ends[idx] - starts[idx], 1e-6), 0, 1)
    return ph, pos


def _synth_audio(segs, n: int, sr: int, rng: np.random.Generator, voice: Voice, ev: EmotionVoice,
                 accents: list[tuple[float, float]] = ()):
    t = np.arange(n) / sr
    accent = _accent_curve(accents, t)
    ph, pos = _per_sample(segs, t)
    formants = np.array([p.formants for p in PHONES])[ph] * voice.formant_scale
    formants = uniform_filter1d(formants, size=max(1, int(0.03 * sr)), axis=0, mode="nearest")
    vamp = np.array([p.voice_amp for p in PHONES])[ph]
    vamp = uniform_filter1d(vamp, size=max(1, int(0.015 * sr)), mode="nearest")

    phase_a, phase_b = rng.uniform(0, 2 * np.pi, 2)
    f0 = voice.f0 * ev.pitch * (1.0 + ev.pitch_range * (0.06 * np.sin(2 * np.pi * 0.7 * t + phase_a)
                                                         + 0.03 * np.sin(2 * np.pi * 1.9 * t + phase_b))
                                + ev.tremor * np.sin(2 * np.pi * 6.0 * t)) * (1.0 + ACCENT_F0 * accent)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    n_harm = int(min(60, 7600 / f0.min()))
    h = np.arange(1, n_harm + 1, dtype=np.float64)
    voiced = np.zeros(n)
    for a in range(0, n, 8000):  # chunks keep the (samples, harmonics) arrays small
        b = min(n, a + 8000)
        hf = f0[a:b, None] * h[None]
        amp = sum(g / (1.0 + ((hf - formants[a:b, i:i + 1]) / bw) ** 2)
                  for i, (g, bw) in enumerate(zip(_FORMANT_GAIN, _FORMANT_BW)))
        amp = amp * h[None] ** -0.5 * (hf < 7600)
        voiced[a:b] = (amp * np.sin(phase[a:b, None] * h[None])).sum(axis=1)
    voiced /= 1.2  # RMS ~0.5 for an open vowel: vowels ~10 dB above fricatives

    white = rng.standard_normal(n)
    noise = np.zeros(n)
    noise_w_total = np.zeros(n)
    bands = sorted({p.noise_band for p in PHONES if p.noise_band})
    for band in bands:
        sos = butter(4, band, btype="band", fs=sr, output="sos")
        filt = sosfilt(sos, white)
        filt /= np.sqrt(np.mean(filt ** 2)) + 1e-12
        w = np.zeros(n)
        for i, p in enumerate(PHONES):
            if p.noise_band != band:
                continue
            sel = ph == i
            if p.kind == "stop":  # closure (silent) then a burst at the release
                sel &= pos > 0.6
            w[sel] = p.noise_amp
        w = uniform_filter1d(w, size=max(1, int(0.008 * sr)), mode="nearest")
        noise += w * filt
        noise_w_total += w
    aspiration = sosfilt(butter(2, 1000, btype="high", fs=sr, output="sos"), rng.standard_normal(n))
    gain = ev.energy * (1.0 + ACCENT_GAIN * accent)
    audio = gain * (vamp * (voiced + voice.breathiness * aspiration) + noise) * 0.3
    audio += 1e-4 * rng.standard_normal(n)  # recording noise floor
    envelope = gain * (vamp + noise_w_total)
    return np.clip(audio, -0.99, 0.99).astype(np.float32), envelope


def _mouth_aus(segs, times_c: np.ndarray, env_c: np.ndarray) -> np.ndarray:
    ph, _ = _per_sample(segs, times_c + ANTICIPATION_S)
    table = np.zeros((len(PHONES), NUM_AUS))
    for i, p in enumerate(PHONES):
        for name, v in p.aus.items():
            table[i, AU_INDEX[name]] = v
    targets = table[ph]
    aus = gaussian_filter1d(targets, sigma=COARTICULATION_SIGMA_S * CONTROL_RATE, axis=0, mode="nearest")
    loud = gaussian_filter1d(env_c, sigma=0.03 * CONTROL_RATE, mode="nearest")
    for name in ("AU25", "AU26"):  # louder speech opens the mouth wider
        aus[:, AU_INDEX[name]] *= 0.6 + 0.4 * np.clip(loud, 0, 1.6)
    return aus


def _emotion_aus(times, emotion, intensity, lead, rng) -> np.ndarray:
    aus = np.zeros((len(times), NUM_AUS))
    weights = EMOTION_AUS[emotion]
    if not weights:
        return aus
    f = rng.uniform(0.1, 0.4, 2)
    p = rng.uniform(0, 2 * np.pi, 2)
    slow = 1.0 + 0.15 * np.sin(2 * np.pi * f[0] * times + p[0]) + 0.10 * np.sin(2 * np.pi * f[1] * times + p[1])
    ramp = np.clip((times - lead) / 0.6, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    level = intensity * ramp * slow
    for name, w in weights.items():
        aus[:, AU_INDEX[name]] = w * level
    return aus


def _raised_cosine(times, start: float, dur: float) -> np.ndarray:
    x = (times - start) / dur
    return np.where((x > 0) & (x < 1), 0.5 * (1 - np.cos(2 * np.pi * x)), 0.0)


def _accented_vowels(segs, lead: float, rng) -> list[tuple[float, float]]:
    """(start, end) of the vowels that carry a pitch accent."""
    return [(s, e) for i, s, e in segs if PHONES[i].kind == "vowel" and s > lead
            and rng.uniform() < ACCENT_PROB]


def _accent_curve(accents, times) -> np.ndarray:
    """0..1 per time: a raised-cosine bump over each accented vowel (30 ms margins)."""
    out = np.zeros(len(times))
    for s, e in accents:
        out = np.maximum(out, _raised_cosine(times, s - 0.03, e - s + 0.06))
    return out


def _gesture_aus(times, accents, lead: float, rng, rate: float = GESTURE_RATE,
                 gesture_aus: tuple[str, ...] = GESTURE_AUS) -> np.ndarray:
    """(T, 17): eyebrow flashes on pitch accents + random single-AU expression events (``rate``/s),
    each an AU drawn uniformly from ``gesture_aus`` (an AU listed twice comes twice as often)."""
    aus = np.zeros((len(times), NUM_AUS))
    for s, _ in accents:
        if rng.uniform() >= BROW_FLASH_PROB:
            continue
        bump = _raised_cosine(times, s - 0.12, rng.uniform(0.4, 0.7))
        a1 = rng.uniform(0.35, 0.85)
        aus[:, AU_INDEX["AU01"]] = np.maximum(aus[:, AU_INDEX["AU01"]], a1 * bump)
        aus[:, AU_INDEX["AU02"]] = np.maximum(aus[:, AU_INDEX["AU02"]], min(1.0, a1 * rng.uniform(0.5, 1.1)) * bump)
    end = float(times[-1]) if len(times) else 0.0
    t = lead + 0.2 + rng.exponential(1.0 / rate)
    while t < end - 0.3:
        k = AU_INDEX[gesture_aus[int(rng.integers(len(gesture_aus)))]]
        bump = rng.uniform(0.3, 0.75) * _raised_cosine(times, t, rng.uniform(0.6, 1.6))
        aus[:, k] = np.maximum(aus[:, k], bump)
        t += rng.exponential(1.0 / rate)
    return aus


def _blinks(times, lead, emotion, rng, duration=(0.15, 0.25)):
    """AU45 track: raised-cosine blinks of ``duration`` s every 1.5-4.5 s (less often when surprised)."""
    track = np.zeros(len(times))
    starts = []
    slow = 1.8 if emotion == "surprised" else 1.0
    end = float(times[-1]) if len(times) else 0.0
    t = lead + 0.1 + rng.uniform(0.1, 2.5) * slow
    while t < end:
        dur = rng.uniform(*duration)
        peak = rng.uniform(0.85, 1.0)
        x = np.clip((times - t) / dur, 0, 1)
        track = np.maximum(track, peak * 0.5 * (1 - np.cos(2 * np.pi * x)) * (x > 0) * (x < 1))
        starts.append(float(t))
        t += dur + rng.uniform(1.5, 4.5) * slow
    return track, starts


def synthesize_clip(seconds: float, sr: int, fps: float, rng: np.random.Generator,
                    emotion: str = "neutral", voice: Voice | None = None,
                    intensity: float | None = None, lead: float | None = None,
                    gestures: bool = True) -> SpeechClip:
    """One talking clip: audio + per-frame AUs + the phone alignment (see module docstring).

    ``gestures`` draws from a child of ``rng`` (``rng.spawn``), so switching them off leaves the
    phones, audio noise, emotion and blinks of a seed unchanged.
    """
    if emotion not in EMOTION_AUS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    voice = voice or Voice(f0=120.0, formant_scale=1.0, rate=1.0, breathiness=0.04)
    ev = EMOTION_VOICE[emotion]
    n_frames, n_samples = clip_lengths(seconds, sr, fps)
    duration = n_samples / sr
    if intensity is None:
        intensity = 0.0 if emotion == "neutral" else float(rng.uniform(0.55, 0.95))
    if lead is None:
        lead = float(rng.uniform(0.28, 0.34))
    segs = sample_phones(duration, rng, rate=voice.rate * ev.tempo, lead=lead)
    gesture_rng = rng.spawn(1)[0] if gestures else None
    accents = _accented_vowels(segs, lead, gesture_rng) if gestures else []
    audio, env = _synth_audio(segs, n_samples, sr, rng, voice, ev, accents)

    times_c = np.arange(int(np.ceil(duration * CONTROL_RATE)) + 1) / CONTROL_RATE
    env_c = np.interp(times_c, np.arange(n_samples) / sr, env)
    mouth_c = _mouth_aus(segs, times_c, env_c)
    times = np.arange(n_frames) / fps
    mouth = np.stack([np.interp(times, times_c, mouth_c[:, k]) for k in range(NUM_AUS)], axis=1)
    emo = _emotion_aus(times, emotion, intensity, lead, rng)
    if gestures:
        emo = 1.0 - (1.0 - np.clip(emo, 0, 1)) * (1.0 - _gesture_aus(times, accents, lead, gesture_rng))
    aus = 1.0 - (1.0 - np.clip(mouth, 0, 1)) * (1.0 - np.clip(emo, 0, 1))
    blink, blink_starts = _blinks(times, lead, emotion, rng)
    aus[:, AU_INDEX["AU45"]] = np.maximum(aus[:, AU_INDEX["AU45"]], blink)
    # the neutral moment: exactly zero well before the (smoothed, anticipated) speech onset
    aus[times < lead - 0.15] = 0.0
    phones = [(PHONES[i].name, round(s, 4), round(e, 4)) for i, s, e in segs]
    return SpeechClip(audio=audio, aus=np.clip(aus, 0, 1).astype(np.float32), phones=phones,
                      envelope=np.interp(times, np.arange(n_samples) / sr, env).astype(np.float32),
                      emotion=emotion, intensity=float(intensity), blinks=blink_starts)


def synthesize_speech(seconds: float, sr: int, fps: float, rng: np.random.Generator,
                      emotion: str = "neutral", voice: Voice | None = None,
                      gestures: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(audio (N,) float32, aus (T, 17) float32)`` with T = round(seconds·fps), N = T/fps·sr."""
    clip = synthesize_clip(seconds, sr, fps, rng, emotion=emotion, voice=voice, gestures=gestures)
    return clip.audio, clip.aus
