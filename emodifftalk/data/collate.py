"""Training crops and batch collation of decoded ``seq`` samples.

Time alignment: frame ``i`` starts at ``i / fps`` seconds; its audio starts at sample
``round(i / fps * audio_rate)`` and its audio features at ``round(i / fps * feature_rate)``.
"""

from __future__ import annotations

import numpy as np
import torch

from emodifftalk.au import NUM_AUS


def crop_sequence(sample: dict, window_frames: int, rng: np.random.Generator, audio_rate: int = 16000,
                  feature_rate: float = 50.0) -> dict:
    """A random aligned window of ``window_frames`` frames of a decoded ``seq`` sample, with the
    matching audio samples (and features). Shorter clips are returned whole (collation pads).
    ``meta["crop_start"]`` records the first frame."""
    aus = sample["aus"]
    t = aus.shape[0]
    fps = float(sample["meta"]["fps"])
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    start = int(rng.integers(0, t - window_frames + 1)) if t > window_frames else 0
    n = min(window_frames, t)
    out = dict(sample)
    out["aus"] = aus[start:start + n]
    out["au_mask"] = sample["au_mask"][start:start + n]
    if sample.get("verts") is not None:
        out["verts"] = sample["verts"][start:start + n]

    def span(rate: float) -> slice:
        a = int(round(start / fps * rate))
        return slice(a, a + int(round(n / fps * rate)))

    out["audio"] = sample["audio"][span(audio_rate)]
    if sample.get("feats") is not None:
        out["feats"] = sample["feats"][span(feature_rate)]
    out["meta"] = dict(sample["meta"], crop_start=start)
    return out


def _pad(arrays: list[np.ndarray], dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack along a new batch dim, zero-padding dim 0; returns (values, (B, L) bool mask).

    Padded in numpy, then wrapped: torch's multi-threaded copy is up to 40x slower when the
    cores are oversubscribed (DataLoader workers + the training process)."""
    length = max(a.shape[0] for a in arrays)
    rest = arrays[0].shape[1:]
    values = np.zeros((len(arrays), length) + tuple(rest), dtype=dtype)
    mask = np.zeros((len(arrays), length), dtype=bool)
    for i, a in enumerate(arrays):
        if a.shape[1:] != rest:
            raise ValueError(f"cannot batch arrays of shapes {rest} and {a.shape[1:]} beyond the time axis")
        values[i, :a.shape[0]] = a
        mask[i, :a.shape[0]] = True
    return torch.from_numpy(values), torch.from_numpy(mask)


def collate_sequences(samples: list[dict]) -> dict:
    """Batch decoded (cropped) ``seq`` samples, zero-padding to the longest:

    ``aus`` (B,T,17) f32, ``au_mask`` (B,T,17) bool (False in padding), ``frame_mask`` (B,T) bool,
    ``verts`` (B,T,V,3) f32 when every sample has verts with the same V, ``audio`` (B,N) f32,
    ``audio_mask`` (B,N) bool, ``feats`` (B,Ta,D) f32 + ``feats_mask`` (B,Ta) when every sample has
    features, ``keys`` [B], ``meta`` [B]. Templates are not added (tasks look them up by identity).
    """
    if not samples:
        raise ValueError("collate_sequences got an empty list")
    for s in samples:
        if s.get("kind", "seq") != "seq":
            raise ValueError(f"collate_sequences takes seq samples, got {s.get('kind')!r} ({s.get('key')})")
        assert s["aus"].ndim == 2 and s["aus"].shape[1] == NUM_AUS, s["aus"].shape
    aus, frame_mask = _pad([s["aus"] for s in samples], np.float32)
    au_mask, _ = _pad([s["au_mask"] for s in samples], np.bool_)
    audio, audio_mask = _pad([s["audio"] for s in samples], np.float32)
    batch = {"aus": aus, "au_mask": au_mask, "frame_mask": frame_mask, "audio": audio,
             "audio_mask": audio_mask, "keys": [s["key"] for s in samples], "meta": [s["meta"] for s in samples]}
    verts = [s.get("verts") for s in samples]
    if all(v is not None for v in verts) and len({v.shape[1] for v in verts}) == 1:
        batch["verts"], _ = _pad(verts, np.float32)
    feats = [s.get("feats") for s in samples]
    if all(f is not None for f in feats):
        batch["feats"], batch["feats_mask"] = _pad(feats, np.float32)
    return batch
