"""Text-to-AU speed on CPU: text encoding throughput and the head's training step.

Reported (medians of --repeats runs, interleaved so background load hits all variants alike):

* ``encode_<encoder>_t<threads>``: texts/s encoding the shipped data set's descriptions
  (batch 64) with the frozen encoder (hashing always; minilm unless --no-minilm);
* ``step_ms_t<threads>``: one optimizer step of the TextToAU head (forward + eq. 25 loss +
  backward + AdamW) on a batch of --batch anchors (x7 texts: anchor, 3 positives, 3 negatives),
  MiniLM-sized (384-d) features, for 1 and 2 intra-op threads;
* ``predict_ms``: one ``model(feats)`` call for a single prompt (head only).

Usage: python benchmarks/bench_text2au.py [--repeats 5] [--batch 8] [--no-minilm] [--out FILE]
Benchmarks are not tests: nothing here asserts a time. Wall-clock and process CPU time are both
recorded (CPU time is less sensitive to other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from emodifftalk.config import Text2AUConfig
from emodifftalk.text2au.model import TextToAU
from emodifftalk.text2au.dataset import load_entries
from emodifftalk.text2au.encoders import HashingEncoder
from emodifftalk.text2au.losses import text2au_loss


def _timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per timing")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/bench_text2au.json")
    args = ap.parse_args()

    texts = [e.description for e in load_entries()]
    encoders = {"hashing": HashingEncoder()}
    if not args.no_minilm:
        from emodifftalk.text2au.encoders import MiniLMEncoder

        encoders["minilm"] = MiniLMEncoder()
    cfg = Text2AUConfig()
    torch.manual_seed(0)
    model = TextToAU(384, cfg.hidden_dim, cfg.proj_dim, cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B = args.batch
    feats = torch.nn.functional.normalize(torch.randn(B * 7, 384), dim=-1)
    labels = torch.randint(0, 2, (B, 17)).float()

    def train_steps():
        for _ in range(args.steps):
            out = model(feats)
            z = out["z"]
            terms = text2au_loss(out["logits"][:B], labels, z[:B], z[B:4 * B].reshape(B, 3, -1),
                                 z[4 * B:].reshape(B, 3, -1), cfg)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()

    one = feats[:1]
    model.eval()

    def predict_calls():
        with torch.no_grad():
            for _ in range(100):
                model(one)

    samples: dict[str, list[tuple[float, float]]] = {}
    default_threads = torch.get_num_threads()
    for _ in range(args.repeats):
        for threads in sorted({1, 2}):
            torch.set_num_threads(threads)
            for name, enc in encoders.items():
                samples.setdefault(f"encode_{name}_t{threads}", []).append(_timed(lambda e=enc: e.encode(texts)))
            model.train()
            samples.setdefault(f"step_ms_t{threads}", []).append(_timed(train_steps))
            model.eval()
        torch.set_num_threads(1)
        samples.setdefault("predict_ms", []).append(_timed(predict_calls))
    torch.set_num_threads(default_threads)

    results: dict[str, float] = {}
    for key, runs in samples.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        if key.startswith("encode_"):
            results[key + "_texts_per_s"] = len(texts) / wall
            results[key + "_cpu_s"] = cpu
        elif key.startswith("step_ms"):
            results[key] = 1000 * wall / args.steps
            results[key + "_cpu"] = 1000 * cpu / args.steps
        else:
            results[key] = 1000 * wall / 100
    report = {"benchmark": "text2au", "n_texts": len(texts), "batch": B, "repeats": args.repeats,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "loadavg": os.getloadavg(), "torch": torch.__version__},
              "results": {k: round(v, 3) for k, v in results.items()}}
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
