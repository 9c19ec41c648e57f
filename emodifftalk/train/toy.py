"""Built-in ``toy`` task: a small transformer regressing a fixed random sequence-to-sequence teacher.

Used by the trainer tests and ``benchmarks/bench_trainer.py``. Every batch is generated from a
private generator seeded by ``(seed, rank, batch_index)``, so data are reproducible, differ per
rank, and resume exactly from ``start_step``. Test knobs come from the constructor or, for runs
launched through the CLI, from environment variables (``ToyTask.from_env``):

  EMODIFFTALK_TOY_D_MODEL / _LAYERS / _SEQ   model width, depth, sequence length
  EMODIFFTALK_TOY_NAN_STEPS="3,4"            make the loss NaN at these optimizer steps ...
  EMODIFFTALK_TOY_NAN_RANK=1                 ... only on this rank (default: every rank)
  EMODIFFTALK_TOY_SLEEP=0.1                  seconds of fake data latency per batch
  EMODIFFTALK_TOY_SAMPLE_LOG=DIR             append the sample ids of every batch to DIR/rank<r>.txt
  EMODIFFTALK_TOY_SKIP_EVERY=5               simulate one corrupt (skipped) sample every k batches
  EMODIFFTALK_TOY_EMA=1                      keep an EMA of the weights (with train.ema_decay > 0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodifftalk.config import Config
from emodifftalk.distributed.seed import torch_generator
from emodifftalk.train.task import Task, Validation, register_task

_TEACHER_KEY = 10_000_019  # generator keys that cannot collide with a rank id
_VAL_KEY = 10_000_079


class ToyRegressor(nn.Module):
    """(B, T, d_in) → (B, T, d_out): linear embed + learned positions + transformer encoder + head."""

    def __init__(self, d_in: int, d_out: int, d_model: int, n_layers: int, n_heads: int, seq_len: int,
                 dropout: float):
        super().__init__()
        self.d_in, self.seq_len = d_in, seq_len
        self.embed = nn.Linear(d_in, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=2 * d_model, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, d_out)

    def forward(self, x: Tensor) -> Tensor:
        assert x.dim() == 3 and x.shape[2] == self.d_in and x.shape[1] <= self.seq_len, \
            f"x must be (B, T<={self.seq_len}, {self.d_in}), got {tuple(x.shape)}"
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(self.encoder(h)))


@dataclasses.dataclass
class ToyTask(Task):
    cfg: Config
    d_in: int = 16
    d_out: int = 8
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 16
    dropout: float = 0.1
    nan_steps: tuple[int, ...] = ()
    nan_rank: int | None = None
    sleep: float = 0.0
    sample_log: str | None = None
    skip_every: int = 0
    ema: bool = False
    name: str = "toy"

    def __post_init__(self):
        self._rank = 0
        self._skipped = 0

    @classmethod
    def from_env(cls, cfg: Config) -> ToyTask:
        env = os.environ.get

        def _int(key, default):
            return int(env(key, default))

        steps = tuple(int(s) for s in env("EMODIFFTALK_TOY_NAN_STEPS", "").split(",") if s.strip())
        nan_rank = env("EMODIFFTALK_TOY_NAN_RANK")
        return cls(cfg, d_model=_int("EMODIFFTALK_TOY_D_MODEL", 64), n_layers=_int("EMODIFFTALK_TOY_LAYERS", 2),
                   seq_len=_int("EMODIFFTALK_TOY_SEQ", 16), nan_steps=steps,
                   nan_rank=int(nan_rank) if nan_rank not in (None, "") else None,
                   sleep=float(env("EMODIFFTALK_TOY_SLEEP", "0")), sample_log=env("EMODIFFTALK_TOY_SAMPLE_LOG"),
                   skip_every=_int("EMODIFFTALK_TOY_SKIP_EVERY", 0),
                   ema=env("EMODIFFTALK_TOY_EMA", "0") not in ("0", ""))

    # ---- model and data ------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        return ToyRegressor(self.d_in, self.d_out, self.d_model, self.n_layers, self.n_heads, self.seq_len,
                            self.dropout)

    def _teacher(self, seed: int) -> tuple[Tensor, Tensor]:
        g = torch_generator(seed, _TEACHER_KEY)
        w1 = torch.randn(self.d_in, 32, generator=g) / self.d_in**0.5
        w2 = torch.randn(32, self.d_out, generator=g) / 32**0.5
        return w1, w2

    def _make(self, seed: int, g: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        """Inputs (n, T, d_in) and targets (n, T, d_out): a pointwise MLP plus a running mean over
        time (so attention has something to learn)."""
        w1, w2 = self._teacher(seed)
        x = torch.randn(n, self.seq_len, self.d_in, generator=g)
        f = torch.tanh(x @ w1) @ w2
        steps = torch.arange(1, self.seq_len + 1, dtype=x.dtype).view(1, -1, 1)
        y = 0.5 * f + f.cumsum(dim=1) / steps
        return x, y

    def _skips_before(self, batch_index: int) -> int:
        return batch_index // self.skip_every if self.skip_every > 0 else 0

    def train_batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[dict]:
        self._rank = rank
        self._skipped = self._skips_before(start_step)  # counters resume with the data position
        bs = self.cfg.data.batch_size
        with contextlib.ExitStack() as stack:
            log_file = None
            if self.sample_log:
                Path(self.sample_log).mkdir(parents=True, exist_ok=True)
                log_file = stack.enter_context(open(Path(self.sample_log) / f"rank{rank}.txt", "a"))
            i = start_step
            while True:
                x, y = self._make(seed, torch_generator(seed, rank, i), bs)
                ids = (i * world_size + rank) * bs + torch.arange(bs)
                if self.skip_every > 0 and (i + 1) % self.skip_every == 0:
                    x, y, ids = x[:-1], y[:-1], ids[:-1]  # pretend the last sample failed to decode
                    self._skipped += 1
                if self.sleep:
                    time.sleep(self.sleep)
                if log_file is not None:
                    log_file.write(f"{i} {' '.join(str(int(v)) for v in ids)} {float(x.sum()):.6f}\n")
                    log_file.flush()
                yield {"x": x, "y": y, "sample_id": ids, "batch_index": i}
                i += 1

    # ---- objective -------------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        pred = model(batch["x"])
        mse = F.mse_loss(pred, batch["y"])
        smooth = (pred[:, 1:] - pred[:, :-1]).pow(2).mean()
        total = mse + 0.01 * smooth
        if step in self.nan_steps and (self.nan_rank is None or self.nan_rank == self._rank):
            total = total * float("nan")
        return {"loss": total, "mse": mse.detach(), "smooth": smooth.detach()}

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> Validation:
        seed = self.cfg.train.seed
        x, y = self._make(seed, torch_generator(seed, _VAL_KEY), 64)
        device = next(model.parameters()).device
        pred = model(x.to(device)).float().cpu()
        return Validation({"mse": float(F.mse_loss(pred, y))}, media=(pred[0], y[0]))

    def log_media(self, writer, step: int, media) -> None:
        pred, y = media
        img = torch.cat([pred, y], dim=1).T  # (2 * d_out, T): prediction rows above target rows
        img = (img - img.min()) / (img.max() - img.min() + 1e-8)
        writer.add_image("toy/prediction_vs_target", img.unsqueeze(0).expand(3, -1, -1), step)

    def skip_stats(self) -> dict[str, int]:
        return {"corrupt_samples": self._skipped}

    def export_extra(self, model: nn.Module, out_dir: Path) -> None:
        (out_dir / "toy_model.txt").write_text(f"ToyRegressor d_model={self.d_model} layers={self.n_layers}\n")


register_task("toy", ToyTask.from_env)
