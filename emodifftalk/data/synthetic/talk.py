"""v2 talking clips: espeak-ng speech with phoneme timings -> visemes -> true AU activations.

Audio is real TTS (``tts.py``) of random sentences (``sentences.py``) in the identity's language
(sometimes another one), with the identity's voice variant, pitch and rate and the emotion's
prosody (pitch, range, rate, loudness). The phoneme events drive the lip articulators
(``visemes.py``), each vowel's jaw height scaled by its loudness in the audio; the articulators
set the speech part of the true AU activations; emotion AUs, brow flashes on pitch accents,
random expression events and blinks come from ``speech.py`` as in v1. Every clip starts with
``lead`` seconds of silence: frame 0 is a neutral face. When nobody speaks the lips close: the
visemes relax to the rest mouth, and the emotions' own mouth AUs (surprise's dropped jaw, fear's
parted lips) keep only ``PAUSE_MOUTH_SHARE`` of their strength until speech resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.data.audio import resample

from .head import Voice
from .sentences import LANGUAGES, random_sentence
from .speech import (
    EMOTION_AUS,
    EMOTION_VOICE,
    EMOTIONS,
    GESTURE_AUS,
    PHONES,
    _blinks,
    _emotion_aus,
    _gesture_aus,
    _synth_audio,
    sample_phones,
)
from .tts import Prosody, speak
from .visemes import A_CLOSE, A_JAW, A_LABIO, articulation, is_vowel, speaking, viseme_of

LANGUAGE_ORDER: tuple[str, ...] = ("en", "cmn", "es", "ja", "de", "ru")
NATIVE_SHARE = 0.75  # clips in the identity's own language
PAUSE_S = (0.12, 0.45)
ACCENT_PROB = 0.3
GESTURE_RATE = 0.8  # single-AU expression events per second (v1: 0.35): each AU is seen often
# enough on its own, in a few dozen clips, for its label reliability to be measurable
GESTURE_AUS_V2 = GESTURE_AUS + ("AU14",)  # the dimpler twice as often: the subtlest AU for the
# tracker, shown only by these events, is otherwise too rare in a small set to measure its labels
PAUSE_MOUTH_SHARE = 0.2  # of an emotion's AU25/AU26 left while nobody speaks
BLINK_S = (0.25, 0.4)  # closing + reopening; v1's 0.15-0.25 s were fast for 25 fps


@dataclass(frozen=True)
class TTSVoice:
    language: str
    variant: str
    pitch: int  # espeak 0..100
    rate: int  # words per minute


def identity_voice(voice: Voice, index: int, rng: np.random.Generator) -> TTSVoice:
    """espeak-ng settings of an identity, consistent with its v1 ``Voice`` (sex from f0)."""
    male = voice.f0 < 150
    variant = f"m{int(rng.integers(1, 8))}" if male else f"f{int(rng.integers(1, 6))}"
    pitch = np.interp(voice.f0, [95, 140, 170, 235], [25, 50, 50, 80])
    return TTSVoice(language=LANGUAGE_ORDER[index % len(LANGUAGE_ORDER)], variant=variant,
                    pitch=int(round(pitch)), rate=int(round(165 * voice.rate)))


@dataclass
class TalkClip:
    """audio (N,) float32 at sr; phones [(ipa, start_s, end_s)] ('' = pause); articulators (T, 5);
    aus (T, 17) true activations in [0, 1]; accents [(start_s, end_s)] of accented vowels."""

    audio: np.ndarray
    phones: list[tuple[str, float, float]]
    articulators: np.ndarray
    aus: np.ndarray
    emotion: str
    intensity: float
    language: str
    text: str
    lead: float
    accents: list[tuple[float, float]]
    blinks: list[float]


def speech_aus(art: np.ndarray) -> np.ndarray:
    """The AU activations (T, 17) that the lip articulators show: jaw drop, lips part, lip press
    on closures. Rounding/protrusion (AU18/AU22), lip stretching (AU20) and the
    labiodental tuck have no AU among the 17, so they appear in the meshes only."""
    aus = np.zeros((art.shape[0], NUM_AUS))
    jaw, close, labio = art[:, A_JAW], art[:, A_CLOSE], art[:, A_LABIO]
    aus[:, AU_INDEX["AU26"]] = jaw
    aus[:, AU_INDEX["AU25"]] = np.clip(1.6 * jaw, 0, 1) * (1 - close) * (1 - 0.6 * labio)
    aus[:, AU_INDEX["AU24"]] = 0.5 * close * np.clip(1 - 2 * jaw, 0, 1)
    return np.clip(aus, 0, 1)


def phone_levels_db(audio: np.ndarray, sr: int, phones: list[tuple[str, float, float]]) -> list[float]:
    """RMS level of each phone's span of ``audio`` in dB re the loudest phone (pauses included)."""
    power = []
    for _, s, e in phones:
        seg = np.asarray(audio[int(round(s * sr)):int(round(e * sr))], np.float64)
        power.append(float(np.mean(np.square(seg))) if len(seg) else 0.0)
    peak = max(power, default=0.0)
    return [10.0 * np.log10(max(p, 1e-12) / max(peak, 1e-12)) for p in power]


def _prosody(voice: TTSVoice, emotion: str, rng: np.random.Generator) -> Prosody:
    ev = EMOTION_VOICE[emotion]
    return Prosody(rate=int(np.clip(voice.rate * ev.tempo * rng.uniform(0.95, 1.05), 80, 400)),
                   pitch=int(np.clip(voice.pitch * ev.pitch, 0, 100)),
                   pitch_range=int(np.clip(50 * ev.pitch_range, 0, 100)),
                   volume=int(np.clip(100 * ev.energy, 10, 200)), variant=voice.variant)


def _speak_until(duration: float, lead: float, language: str, prosody: Prosody, sr: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, list, str]:
    """Sentences separated by pauses after ``lead`` s of silence, until ``duration`` is filled."""
    n = int(round(duration * sr))
    audio = np.zeros(n, np.float32)
    phones: list[tuple[str, float, float]] = []
    texts = []
    t = lead
    while t < duration - 0.3:
        text = random_sentence(language, rng)
        utt = speak(text, LANGUAGES[language].voice, prosody)
        wav = resample(utt.audio, utt.sample_rate, sr) if utt.sample_rate != sr else utt.audio
        a = int(round(t * sr))
        b = min(n, a + len(wav))
        audio[a:b] = wav[: b - a]
        phones += [(p, t + s, t + e) for p, s, e in utt.phones if t + s < duration]
        texts.append(text)
        t += len(wav) / sr + rng.uniform(*PAUSE_S)
    return audio, [(p, s, min(e, duration)) for p, s, e in phones], " ".join(texts)


_FORMANT_IPA = {"sil": "", "sh": "ʃ"}  # v1 phone classes that are not already IPA letters


def _formant_until(duration: float, lead: float, voice: Voice, emotion: str, sr: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, list, str]:
    """Fallback without espeak-ng: v1's formant synthesis of random phone classes, as IPA."""
    ev = EMOTION_VOICE[emotion]
    n = int(round(duration * sr))
    segs = sample_phones(n / sr, rng, rate=voice.rate * ev.tempo, lead=lead)
    audio, _ = _synth_audio(segs, n, sr, rng, voice, ev)
    phones = [(_FORMANT_IPA.get(PHONES[i].name, PHONES[i].name), s, e) for i, s, e in segs]
    return audio, phones, ""


def _accents(phones, rng) -> list[tuple[float, float]]:
    return [(s, e) for p, s, e in phones if p and is_vowel(viseme_of(p)[0]) and rng.uniform() < ACCENT_PROB]


def talk_clip(seconds: float, sr: int, fps: float, rng: np.random.Generator, voice: TTSVoice,
              emotion: str = "neutral", gestures: bool = True, formant_voice: Voice | None = None) -> TalkClip:
    """One v2 clip of ``round(seconds * fps)`` frames (see the module docstring); with
    ``formant_voice`` the audio is v1's formant synthesis instead of espeak-ng (the fallback)."""
    if emotion not in EMOTION_AUS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    n_frames = int(round(seconds * fps))
    duration = n_frames / fps
    intensity = 0.0 if emotion == "neutral" else float(rng.uniform(0.55, 0.95))
    lead = float(rng.uniform(0.28, 0.34))
    language = voice.language if rng.uniform() < NATIVE_SHARE else str(rng.choice(LANGUAGE_ORDER))
    if formant_voice is not None:
        language = "formant"
        audio, phones, text = _formant_until(duration, lead, formant_voice, emotion, sr, rng)
    else:
        audio, phones, text = _speak_until(duration, lead, language, _prosody(voice, emotion, rng), sr, rng)
    times = np.arange(n_frames) / fps
    art = articulation(phones, times, phone_levels_db(audio, sr, phones))
    gesture_rng = rng.spawn(1)[0]
    accents = _accents(phones, gesture_rng)
    emo = np.clip(_emotion_aus(times, emotion, intensity, lead, rng), 0, 1)
    mouth = [AU_INDEX["AU25"], AU_INDEX["AU26"]]
    emo[:, mouth] *= (PAUSE_MOUTH_SHARE + (1.0 - PAUSE_MOUTH_SHARE) * speaking(phones, times))[:, None]
    if gestures:
        emo = 1.0 - (1.0 - emo) * (1.0 - _gesture_aus(times, accents, lead, gesture_rng, GESTURE_RATE, GESTURE_AUS_V2))
    aus = 1.0 - (1.0 - speech_aus(art)) * (1.0 - emo)
    blink, blink_starts = _blinks(times, lead, emotion, rng, duration=BLINK_S)
    aus[:, AU_INDEX["AU45"]] = np.maximum(aus[:, AU_INDEX["AU45"]], blink)
    quiet = times < lead - 0.15  # the neutral moment
    aus[quiet] = 0.0
    art[quiet] = 0.0
    return TalkClip(audio=audio, phones=[(p, round(s, 4), round(e, 4)) for p, s, e in phones],
                    articulators=art.astype(np.float32), aus=np.clip(aus, 0, 1).astype(np.float32),
                    emotion=emotion, intensity=intensity, language=language, text=text, lead=lead,
                    accents=accents, blinks=blink_starts)
