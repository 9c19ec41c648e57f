"""Tiny packed seq shards for the Speech-to-AU tests (no synth/pack needed).

Audio: tone bursts in a low (300 Hz) and a high (2.5 kHz) band with random on/off envelopes;
labels: AU25 follows the low-band envelope, AU26 the high-band one, AU12 is a per-identity
constant, AU24 is invalid (as under OpenFace), the rest are 0. An audio model can learn 25/26.
"""

from __future__ import annotations

import io
import json

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.data.schema import SCHEMA_VERSION
from emodifftalk.data.shard_writer import ShardSetWriter, encode_npy

SR = 16000


def make_clip(rng, seconds=3.0, fps=25.0, identity_level=0.3):
    import soundfile as sf

    n = int(seconds * SR)
    t = np.arange(n) / SR
    n_frames = round(seconds * fps)
    env = np.zeros((2, n_frames))
    for band in range(2):
        state, f = 0, 0
        while f < n_frames:
            length = int(rng.integers(4, 15))
            env[band, f:f + length] = state * rng.uniform(0.5, 1.0)
            state, f = 1 - state, f + length
    frame_of_sample = np.minimum((t * fps).astype(int), n_frames - 1)
    audio = (env[0][frame_of_sample] * np.sin(2 * np.pi * 300 * t)
             + env[1][frame_of_sample] * np.sin(2 * np.pi * 2500 * t)) * 0.3
    audio += 0.003 * rng.standard_normal(n)
    aus = np.zeros((n_frames, NUM_AUS), np.float32)
    aus[:, AU_INDEX["AU25"]] = env[0]
    aus[:, AU_INDEX["AU26"]] = env[1]
    aus[:, AU_INDEX["AU12"]] = identity_level
    mask = np.ones_like(aus, dtype=np.uint8)
    mask[:, AU_INDEX["AU24"]] = 0
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue(), aus, mask, n_frames


def write_tiny_shards(root, identities=None, clips_per_identity=2, seconds=3.0, fps=25.0, seed=0):
    """Packed folder with seq shards for train/val/test; returns the root path."""
    from pathlib import Path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    identities = identities or {"train": ["a", "b", "c"], "val": ["d"], "test": ["e"]}
    rng = np.random.default_rng(seed)
    shards = []
    for split, ids in identities.items():
        w = ShardSetWriter(root, "seq", split, max_bytes=1 << 30, max_samples=3)
        for j, ident in enumerate(ids):
            level = 0.1 + 0.1 * j
            for c in range(clips_per_identity):
                wav, aus, mask, t = make_clip(rng, seconds, fps, level)
                meta = {"identity": ident, "clip": f"c{c}", "fps": fps, "n_frames": t, "sample_rate": SR,
                        "emotion": "neutral", "split": split, "template": ident,
                        "modalities": ["audio", "aus"], "n_audio_samples": int(seconds * SR)}
                w.write(f"{ident}__c{c}", {"audio.wav": wav, "aus.npy": encode_npy(aus),
                                           "au_mask.npy": encode_npy(mask)}, meta)
        shards += w.close()
    manifest = {"schema_version": SCHEMA_VERSION, "name": "tiny-s2au", "sample_rate": SR,
                "identities": identities, "shards": shards,
                "counts": {"seq": {s: len(v) * clips_per_identity for s, v in identities.items()}},
                "totals": {"bytes": sum(s["bytes"] for s in shards)}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root
