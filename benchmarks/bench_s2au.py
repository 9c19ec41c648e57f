"""Speech-to-AU inference speed on CPU: real-time factor (RTF = compute seconds / audio seconds).

Measures ``predict_aus``'s two stages on 10 s and 60 s of audio:
* front end: the log-mel front end, and a randomly initialised full-size HuBERT-base
  (``transformers.HubertConfig()`` defaults: 768-d, 12 layers; no weights needed for timing);
* encoder: the Speech-to-AU transformer (``--config`` preset's ``s2au`` section) with windowed
  inference and stitching, on precomputed features ("without front end").
"with front end" = front end + encoder, i.e. what ``predict_aus`` costs on raw audio.

    python benchmarks/bench_s2au.py [--config small] [--threads 2] [--repeats 3] [--out bench_s2au.json]

Prints a table and writes JSON. Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial

import numpy as np
import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    from emodifftalk.config import build_config
    from emodifftalk.models.audio_frontend import HubertFrontend, MelFrontend
    from emodifftalk.s2au.inference import extract_features, predict_from_features
    from emodifftalk.s2au.model import SpeechToAU, frames_for_duration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", help="preset for the s2au architecture (default: small)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--durations", default="10,60", help="audio seconds, comma-separated")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--skip-hubert", action="store_true")
    ap.add_argument("--out", default="bench_s2au.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = build_config(args.config)
    win, ovl = cfg.s2au.window_seconds, cfg.s2au.overlap_seconds
    frontends = {"mel": MelFrontend(cfg.audio.n_mels)}
    if not args.skip_hubert:
        from transformers import HubertConfig, HubertModel

        frontends["hubert-base(random)"] = HubertFrontend(HubertModel(HubertConfig()))
    rows = []
    for name, fe in frontends.items():
        fe.eval()
        model = SpeechToAU(cfg.s2au, in_dim=fe.dim, feature_rate=cfg.audio.feature_rate).eval()
        n_params = sum(p.numel() for p in model.parameters())
        for seconds in [float(s) for s in args.durations.split(",")]:
            audio = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)
            feats = extract_features(fe, audio, win, ovl)
            n_frames = frames_for_duration(seconds, args.fps)
            with torch.inference_mode():
                t_fe = _time(partial(extract_features, fe, audio, win, ovl), args.repeats)
                t_enc = _time(partial(predict_from_features, model, feats, n_frames, args.fps, win, ovl),
                              args.repeats)
            rows.append({"frontend": name, "audio_s": seconds, "frontend_s": t_fe, "encoder_s": t_enc,
                         "rtf_frontend": t_fe / seconds, "rtf_without_frontend": t_enc / seconds,
                         "rtf_with_frontend": (t_fe + t_enc) / seconds, "encoder_params": n_params,
                         "feature_dim": fe.dim})
            r = rows[-1]
            print(f"{name:<20} {seconds:>5.0f} s  front end {t_fe:7.3f} s  encoder {t_enc:7.3f} s  "
                  f"RTF without front end {r['rtf_without_frontend']:.4f}  with {r['rtf_with_frontend']:.4f}",
                  flush=True)
    result = {"config": args.config, "s2au": vars(cfg.s2au), "threads": args.threads, "repeats": args.repeats,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
