"""Train-time audio augmentation of decoded ``seq`` samples (Speech-to-AU and the motion model).

The synthetic speech is clean studio audio; real recordings are not. Each training clip is, with
probability ``audio.train_augment_prob``, passed through :func:`emodifftalk.data.augment.augment_audio`
(noise, reverb, level, band limits, another sample rate, a stereo pair) and brought back exactly
the way :func:`emodifftalk.data.audio.load_audio` brings a user's file in (down-mix to mono,
resample to 16 kHz), so the models learn on what inference will feed them.

Channel EQ: with probability ``audio.train_eq_prob`` an augmented Speech-to-AU clip also gets a
random low shelf and high shelf first (``AugmentSpec.p_eq``): real microphones and rooms tilt the
spectrum (most real recordings put 90-95 % of their energy below 1 kHz, espeak-ng 72 %), which
moves the broadband level (the level channels) away from the 1-3 kHz band. Motion clips do not
get it (not measured there). Off by default: no gain at both seeds on the real recordings.

Silence: with probability ``audio.train_silence_prob`` a Speech-to-AU clip gets extra lead-in
and/or trailing silence (before augmentation, so the noise bed covers it). Those frames are
labelled "lips closed" (AU25 = AU26 = 0) and leave the other AUs unlabelled (masked): whether
someone frowns in silence is not in the audio. The clip's own pauses (``audio.train_closed_below_db``
below its peak) are labelled lips-closed too.

Voices: the log-mel part of a Speech-to-AU clip's features is, with probability
``audio.train_vtlp_prob``, warped along frequency by a factor in ``audio.train_vtlp_range``
(vocal-tract length perturbation: the formants of a shorter or longer vocal tract) and gets
``audio.train_freq_masks`` frequency masks (SpecAugment). A few espeak-ng voices are all the
model hears; real speakers' formants sit elsewhere, and the mouth must not hang on one band.

Loudness: with probability ``audio.train_loudness_prob`` a Speech-to-AU clip's level is shaped by
a smooth random contour (syllable to phrase scale, up to ``audio.train_loudness_db`` deep) and
its AU25/AU26 labels follow the world's own rule for loudness (``visemes.jaw_gain``: a vowel
24 dB below the loudest opens the jaw 35 % as wide). espeak-ng speaks every syllable at nearly
the same level, so without this the model sees too little loudness variation to learn that
real speech opens the mouth with its stressed, loud syllables.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from emodifftalk.au import AU_INDEX
from emodifftalk.config import AudioConfig
from emodifftalk.data.audio import SAMPLE_RATE, frame_levels_db, resample
from emodifftalk.data.augment import AugmentSpec, augment_audio
from emodifftalk.data.synthetic.visemes import jaw_gain
from emodifftalk.models.audio_frontend import mel_centre_hz

SILENCE_SECONDS = (0.2, 1.2)  # length range of each added silent stretch
CLOSED_LIP_AUS = (AU_INDEX["AU25"], AU_INDEX["AU26"])
CONTOUR_SIGMA_S = (0.08, 0.4)  # smoothing of the loudness contour: a syllable to a phrase
CONTOUR_MIN_DB = 6.0  # the shallowest contour drawn (its depth is uniform in [this, train_loudness_db])
SPEECH_DB = -40.0  # frames at least this loud (re the clip's peak) are speech for the jaw rule
FREQ_MASK_MAX_SHARE = 0.1  # the widest frequency mask: this share of the mel bins (8 of 80)


def augmented_16k(audio: np.ndarray, rng: np.random.Generator, spec: AugmentSpec = AugmentSpec()) -> np.ndarray:
    """Mono 16 kHz ``audio`` through ``augment_audio`` and back through the loader's path."""
    aug = augment_audio(audio, SAMPLE_RATE, rng, spec)
    x = aug.audio.mean(axis=1) if aug.audio.ndim == 2 else aug.audio  # the loader's down-mix
    x = resample(x, aug.sample_rate, SAMPLE_RATE)
    n = len(audio)  # resampling round trips may differ by a sample or two: keep the clip's length
    return np.pad(x, (0, max(0, n - len(x))))[:n].astype(np.float32)


def close_lips_in_silence(sample: dict, below_db: float) -> dict:
    """``sample`` with AU25 = AU26 = 0 (and labelled) in video frames whose audio is more than
    ``below_db`` dB below the clip's loudest frame (``audio.train_closed_below_db``)."""
    levels = frame_levels_db(sample["audio"], sample["aus"].shape[0], float(sample["meta"]["fps"]), SAMPLE_RATE)
    silent = levels < below_db
    if not silent.any():
        return sample
    aus, mask = sample["aus"].copy(), sample["au_mask"].copy()
    for k in CLOSED_LIP_AUS:
        aus[silent, k] = 0.0
        mask[silent, k] = True
    return dict(sample, aus=aus, au_mask=mask)


def loudness_contour(n_frames: int, fps: float, depth_db: float, rng: np.random.Generator) -> np.ndarray:
    """(n_frames,) smooth random gain in dB: 0 at its loudest, ``-depth_db`` at its quietest."""
    sigma = rng.uniform(*CONTOUR_SIGMA_S) * fps
    g = gaussian_filter1d(rng.standard_normal(int(n_frames)), sigma, mode="reflect")
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-9)
    return (g - 1.0) * depth_db


def with_loudness_contour(sample: dict, rng: np.random.Generator, max_db: float) -> dict:
    """``sample`` with its audio shaped by :func:`loudness_contour` and AU25/AU26 scaled as the
    world scales a vowel's jaw with its level re the clip's loudest (``visemes.jaw_gain``), both
    levels measured per video frame before and after. Other AUs and silent frames are untouched."""
    fps = float(sample["meta"]["fps"])
    n = sample["aus"].shape[0]
    gain_db = loudness_contour(n, fps, rng.uniform(min(CONTOUR_MIN_DB, max_db), max_db), rng)
    audio = sample["audio"]
    centres = (np.arange(n) + 0.5) / fps * SAMPLE_RATE
    per_sample = np.interp(np.arange(len(audio)), centres, gain_db)
    shaped = (audio * 10.0 ** (per_sample / 20.0)).astype(audio.dtype)
    before = frame_levels_db(audio, n, fps, SAMPLE_RATE)
    after = frame_levels_db(shaped, n, fps, SAMPLE_RATE)
    gains = np.vectorize(jaw_gain)
    ratio = np.where(before > SPEECH_DB, gains(after) / gains(before), 1.0)
    aus = sample["aus"].copy()
    for k in CLOSED_LIP_AUS:
        aus[:, k] = np.clip(aus[:, k] * ratio, 0.0, 1.0)
    return dict(sample, audio=shaped, aus=aus, feats=None)


def with_silence(sample: dict, rng: np.random.Generator) -> dict:
    """``sample`` with 0.2-1.2 s of digital silence before and/or after it (at least one side), AU
    labels extended as the module docstring says. Needs no meshes (Speech-to-AU samples)."""
    fps = float(sample["meta"]["fps"])
    lead, tail = (int(round(rng.uniform(*SILENCE_SECONDS) * fps)) if on else 0
                  for on in _sides(rng))
    aus, mask = sample["aus"], sample["au_mask"]

    def pad_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.zeros((n, aus.shape[1]), aus.dtype)
        valid = np.zeros((n, aus.shape[1]), bool)
        valid[:, list(CLOSED_LIP_AUS)] = True
        return rows, valid

    (la, lm), (ta, tm) = pad_rows(lead), pad_rows(tail)
    per_frame = SAMPLE_RATE / fps
    audio = sample["audio"]
    n_lead, n_tail = int(round(lead * per_frame)), int(round(tail * per_frame))
    out = dict(sample, feats=None, verts=None)
    out["audio"] = np.concatenate([np.zeros(n_lead, audio.dtype), audio, np.zeros(n_tail, audio.dtype)])
    out["aus"] = np.concatenate([la, aus, ta])
    out["au_mask"] = np.concatenate([lm, mask, tm])
    out["meta"] = dict(sample["meta"], n_frames=int(out["aus"].shape[0]), added_silence=[lead, tail])
    return out


def _sides(rng: np.random.Generator) -> tuple[bool, bool]:
    side = int(rng.integers(0, 3))  # 0: lead-in only, 1: tail only, 2: both
    return side != 1, side != 0


def augment_sample(sample: dict, rng: np.random.Generator, cfg: AudioConfig, *, silence: bool) -> dict:
    """The training view of a decoded seq sample (see the module docstring). Augmented samples
    drop cached features (they describe the clean audio); ``silence=False`` for samples whose
    meshes must stay aligned with the audio and whose labels are meshes (the motion model)."""
    if silence and cfg.train_closed_below_db is not None:
        sample = close_lips_in_silence(sample, cfg.train_closed_below_db)
    # drawn only when enabled, so configs without it replay the random stream of earlier runs
    if silence and cfg.train_loudness_prob > 0 and rng.uniform() < cfg.train_loudness_prob:
        sample = with_loudness_contour(sample, rng, cfg.train_loudness_db)
    if silence and rng.uniform() < cfg.train_silence_prob:
        sample = with_silence(sample, rng)
    if rng.uniform() < cfg.train_augment_prob:
        spec = AugmentSpec(p_eq=cfg.train_eq_prob if silence else 0.0)  # channel EQ: Speech-to-AU only
        sample = dict(sample, audio=augmented_16k(sample["audio"], rng, spec), feats=None, augmented=True)
    return sample


def warp_mel(mel: np.ndarray, factor: float) -> np.ndarray:
    """(Ta, M) log-mel as spoken by a vocal tract ``1 / factor`` as long: the value at each bin's
    centre frequency f is read at f / factor (linear interpolation across bins, edges held)."""
    centres = mel_centre_hz(mel.shape[1]).numpy().astype(np.float64)
    pos = np.interp(centres / factor, centres, np.arange(len(centres)))
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(centres) - 1)
    w = (pos - lo)[None, :]
    return ((1.0 - w) * mel[:, lo] + w * mel[:, hi]).astype(mel.dtype)


def augment_features(feats: np.ndarray, rng: np.random.Generator, cfg: AudioConfig) -> np.ndarray:
    """The training view of a Speech-to-AU clip's features (see the module docstring): only the
    log-mel columns (the first ``cfg.n_mels``) change; level channels and HuBERT features stay."""
    if cfg.frontend != "mel" or not (cfg.train_vtlp_prob > 0 and rng.uniform() < cfg.train_vtlp_prob):
        return feats
    m = int(cfg.n_mels)
    out = feats.copy()
    out[:, :m] = warp_mel(feats[:, :m], rng.uniform(*cfg.train_vtlp_range))
    for _ in range(int(cfg.train_freq_masks)):
        width = int(rng.integers(1, max(1, round(FREQ_MASK_MAX_SHARE * m)) + 1))
        start = int(rng.integers(0, m - width + 1))
        out[:, start:start + width] = 0.0  # the per-utterance mean of a normalised bin
    return out
