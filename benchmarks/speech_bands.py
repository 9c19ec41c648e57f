"""Why do some real recordings miss r(envelope, mouth opening) >= 0.5? Per file, the animation runs as
``eval speech`` runs it (Speech-to-AU -> motion -> held-out template, ``eval.speech`` envelope and
mouth measures), and the mesh's lip opening is compared with:

* ``env``     the envelope ``eval speech`` uses (frame RMS of the whole signal, dB re the peak,
  floored at -40 dB): ``r`` is the figure it reports; ``lag`` the shift in -6..+6 frames with the
  highest r (+ = the mouth moves after the sound) and ``r_lag`` that r;
* ``lp3``     the envelope low-passed at 3 Hz (2nd-order Butterworth, zero phase): r rises here if
  the mouth is only too smooth to follow syllables;
* ``slow`` / ``fast``  r of the 1 s running means (phrase scale) and of what is left (syllable scale);
* ``low`` / ``mid`` / ``high``  the same envelope of the band below 1 kHz, 1-3 kHz, above 3 kHz;
* ``env~mid``  r(envelope, 1-3 kHz envelope): how far the file's level follows its 1-3 kHz band;
* ``low_share`` the share of the file's energy (above 80 Hz) below 1 kHz;
* ``closed_loud`` the share of loud frames (envelope within ``LOUD_DB`` of the peak) where
  Speech-to-AU's own mouth AU (before the silence gate and the loudness rule) is below
  ``CLOSED_AU``: a nearly shut mouth on loud sound (on the synthetic clips: the true mouth AU).

``--synthetic SHARDS`` adds the same band figures for the world's *true* mouth AU on the held-out
synthetic clips (which band the world's mouth follows).

Usage: python benchmarks/speech_bands.py --model RUNS --audio tests/data/real_speech [--synthetic SHARDS]
          [--out FILE.json] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emodifftalk.commands.animate import resolve_export
from emodifftalk.config import apply_overrides
from emodifftalk.data.audio import SAMPLE_RATE, load_audio
from emodifftalk.data.shards import iter_dataset
from emodifftalk.eval.metrics import lagged_pearson, pearson
from emodifftalk.eval.speech import SILENCE_DB, audio_files, envelope_db, mesh_opening, mouth_au, pick_template
from emodifftalk.pipeline.animate import load_models, speech_aus

BANDS = {"low": (80.0, 1000.0), "mid": (1000.0, 3000.0), "high": (3000.0, 8000.0)}
LAGS = range(-6, 7)
SLOW_S = 1.0  # running mean that separates phrase-scale from syllable-scale movement
LOUD_DB, CLOSED_AU = -10.0, 0.15  # closed_loud: frames this loud whose mouth AU is below this


def band_envelopes(audio: np.ndarray, n_frames: int, fps: float) -> tuple[dict[str, np.ndarray], float]:
    """({band: (n_frames,) level dB re its loudest frame, floored at SILENCE_DB}, energy share below 1 kHz)."""
    from scipy.signal import stft

    f, t, spec = stft(np.asarray(audio, np.float64), SAMPLE_RATE, nperseg=400, noverlap=240)  # 10 ms hop
    power = np.abs(spec) ** 2
    idx = np.minimum((t * fps).astype(int), n_frames - 1)
    counts = np.maximum(np.bincount(idx, minlength=n_frames), 1)
    out = {}
    for name, (lo, hi) in BANDS.items():
        e = np.bincount(idx, power[(f >= lo) & (f < hi)].sum(0), minlength=n_frames) / counts
        out[name] = np.maximum(10 * np.log10(np.maximum(e, 1e-12) / max(e.max(), 1e-12)), SILENCE_DB)
    above = power[f >= BANDS["low"][0]].sum()
    return out, float(power[(f >= BANDS["low"][0]) & (f < BANDS["low"][1])].sum() / max(above, 1e-12))


def running_mean(x: np.ndarray, width: int) -> np.ndarray:
    pad = np.pad(x, width // 2, mode="edge")
    return np.convolve(pad, np.ones(width) / width, mode="same")[width // 2: width // 2 + len(x)]


def lowpass(x: np.ndarray, hz: float, fps: float) -> np.ndarray:
    from scipy.signal import butter, filtfilt

    b, a = butter(2, hz / (fps / 2))
    return filtfilt(b, a, x, padlen=min(len(x) - 1, 9))


def closed_loud(env: np.ndarray, mouth: np.ndarray) -> float | None:
    loud = env > LOUD_DB
    return float((mouth[loud] < CLOSED_AU).mean()) if loud.any() else None


def raw_mouth_au(models, audio: np.ndarray, fps: float) -> np.ndarray:
    """Speech-to-AU's mouth AU without the silence gate and the loudness rule."""
    s = models.s2au.cfg.s2au
    gate, rule = s.silence_gate, s.loudness_jaw
    s.silence_gate = s.loudness_jaw = False
    try:
        return mouth_au(speech_aus(models, audio, fps))
    finally:
        s.silence_gate, s.loudness_jaw = gate, rule


def figures(env: np.ndarray, opening: np.ndarray, bands: dict, low_share: float, fps: float) -> dict:
    rs = {k: lagged_pearson(env, opening, k) for k in LAGS}
    lag = max((k for k in rs if rs[k] is not None), key=lambda k: rs[k], default=0)
    w = max(3, int(round(SLOW_S * fps)))
    slow_e, slow_o = running_mean(env, w), running_mean(opening, w)
    row = {"r": pearson(env, opening), "lag": lag, "r_lag": rs[lag], "lp3": pearson(lowpass(env, 3.0, fps), opening),
           "slow": pearson(slow_e, slow_o), "fast": pearson(env - slow_e, opening - slow_o)}
    row.update({name: pearson(b, opening) for name, b in bands.items()})
    row.update({"env~mid": pearson(env, bands["mid"]), "low_share": low_share})
    return row


def real_files(models, cfg, template, files: list[Path], seed: int) -> list[dict]:
    fps = models.frame_rate(cfg)
    rows = []
    for path in files:
        audio = load_audio(path, target_sr=SAMPLE_RATE)
        aus = speech_aus(models, audio, fps)
        opening = mesh_opening(models, template, aus, audio, cfg, seed)
        env, _ = envelope_db(audio, aus.shape[0], fps)
        bands, share = band_envelopes(audio, aus.shape[0], fps)
        row = {"file": path.name, "mesh": figures(env, opening, bands, share, fps),
               "mouth_au": figures(env, mouth_au(aus), bands, share, fps)}
        row["mesh"]["closed_loud"] = closed_loud(env, raw_mouth_au(models, audio, fps))
        rows.append(row)
        m = row["mesh"]
        print(f"{path.name:32s} r {m['r']:.2f} (lag {m['lag']:+d}: {m['r_lag']:.2f}) lp3 {m['lp3']:.2f} "
              f"slow {m['slow']:.2f} fast {m['fast']:.2f} | low {m['low']:.2f} mid {m['mid']:.2f} "
              f"high {m['high']:.2f} | env~mid {m['env~mid']:.2f} low_share {m['low_share']:.2f} "
              f"closed_loud {m['closed_loud'] or 0:.2f}", flush=True)
    return rows


def synthetic_truth(shards: str) -> dict:
    """Which band the world's true mouth AU follows on the test split."""
    acc: dict[str, list] = {}
    for s in iter_dataset(shards, "seq", "test"):
        audio = s["audio"].astype(np.float32)
        fps = float(s["meta"]["fps"])
        true = mouth_au(s["aus_true"])
        env, _ = envelope_db(audio, len(true), fps)
        bands, share = band_envelopes(audio, len(true), fps)
        for k, v in dict(figures(env, true, bands, share, fps), closed_loud=closed_loud(env, true)).items():
            acc.setdefault(k, []).append(v)
    return dict({k: round(float(np.mean([x for x in v if x is not None])), 4) for k, v in acc.items()},
                n_clips=len(acc.get("r", [])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="folder holding s2au/ and motion/ runs (as eval speech)")
    p.add_argument("--audio", default=None, help="an audio file or folder (as eval speech)")
    p.add_argument("--synthetic", default=None, help="shard folder: the world's true mouth on the test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    args = p.parse_args()
    report: dict = {"overrides": args.overrides}
    if args.audio:
        if not args.model:
            p.error("--audio needs --model")
        models = load_models(resolve_export(None, args.model, "s2au", True),
                             resolve_export(None, args.model, "motion", True))
        cfg = models.motion_cfg
        for c in (cfg, models.s2au.cfg):
            apply_overrides(c, list(args.overrides))
        rows = real_files(models, cfg, pick_template(cfg.data.root, None), audio_files(args.audio), args.seed)
        report["files"] = rows
        fail = [r for r in rows if r["mesh"]["r"] < 0.5]
        for name, group in (("all", rows), ("failing", fail), ("passing", [r for r in rows if r not in fail])):
            if group:
                report[f"mean_{name}"] = {k: round(float(np.mean([r["mesh"][k] for r in group
                                                                   if r["mesh"][k] is not None])), 4)
                                          for k in rows[0]["mesh"]}
                print(f"mean over {name} ({len(group)}):", json.dumps(report[f"mean_{name}"]))
        over = [(r["mesh"]["r"], r["mesh"]["env~mid"]) for r in rows]
        report["r_vs_env~mid_over_files"] = pearson(np.array([a for a, _ in over]), np.array([b for _, b in over]))
        print("over files, r(file's r, file's env~mid):", report["r_vs_env~mid_over_files"])
    if args.synthetic:
        report["synthetic_true_mouth"] = synthetic_truth(args.synthetic)
        print("synthetic, true mouth AU:", json.dumps(report["synthetic_true_mouth"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
