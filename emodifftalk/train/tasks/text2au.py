"""``text2au`` training task: Text-to-AU emotion controller (paper supp. §3, eq. 23–25).

The text encoder is frozen, so every text (anchor description, 3 positives, 3 negatives of every
entry) is encoded once before training; batches are rows of those feature tables:

    {"anchor": (B, D), "positives": (B, 3, D), "negatives": (B, 3, D), "labels": (B, 17)}

plus ``"fold"`` (B,): the concept fold of each row (-1 outside the training split).

With ``text2au.finetune_layers=N`` each member first tunes its own copy of MiniLM's top N layers
(:mod:`emodifftalk.train.tasks.text2au_tune`) and the tables hold one feature per member:
``(B, K, D)``, ``(B, 3, K, D)``; the heads then train on them as below, the tuned layers fixed.

Epoch-based schedule: ``text2au.epochs`` epochs of ``ceil(n_train / data.batch_size)`` steps;
:func:`train_text2au` (used by ``emodifftalk text2au train``) sets ``train.max_steps`` from it.
The optimiser is ``train.*`` (lr, betas, weight decay) like every task: one place owns the
learning rate. ``emodifftalk train text2au`` runs the generic path and takes ``train.max_steps``
as given.

Model: a cross-fitted ensemble of ``text2au.members`` heads (``TextToAUEnsemble``). Training rows
are dealt into that many concept folds and member k is trained on all rows but fold k's.

Loss, per member on its rows: eq. (25) = focal BCE (eq. 23) on the anchors -- and, with
``text2au.bce_on_positives``, on the 3 paraphrases too, which carry the same labels -- plus the
structured InfoNCE (eq. 24) of each anchor against its 3 positives and 3 negatives; each term is
averaged over the (member, row) pairs a member may see. Text features get Gaussian noise
(``text2au.feature_noise``) and are re-normalised: embedding-space augmentation, so nearby
phrasings the data set lacks map to the same AUs. ``text2au.mixup`` adds blends of two labelled
rows (:func:`concept_mixup`: summed features, united AUs) to the focal BCE.

Reading (``text2au.compose``, :mod:`emodifftalk.text2au.compose`): the head is trained on whole
texts; at export the training texts are also read clause by clause, each clause by the member
that never saw the text's concept fold, so the calibration and the concept CV measure the
reading that inference uses.

The export directory gets ``text2au.json`` next to ``model.safetensors`` / ``config.json``: the
encoder id the features came from, the decision threshold, the thresholds calibrated on the
out-of-concept predictions (``au_thresholds``, per ``text2au.calibration``), the data file
fingerprint, the split seed, the val/test (paraphrase split) metrics and the concept
cross-validation (``concept_cv``), the reading (``compose``) and the thresholds of texts read in
clauses (``au_thresholds_composed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from emodifftalk.au import AU_NAMES
from emodifftalk.config import Config
from emodifftalk.distributed.seed import torch_generator
from emodifftalk.text2au.calibration import apply_by_reading, calibrate_by_reading, concept_cv
from emodifftalk.text2au.compose import compose_probs
from emodifftalk.text2au.dataset import (
    DATA_VERSION,
    SPLITS,
    Entry,
    concept_folds,
    data_fingerprint,
    load_entries,
    split_entries,
)
from emodifftalk.text2au.encoders import EncoderMismatchError, FeatureCache, TextEncoder, TokenStates, build_encoder
from emodifftalk.text2au.metrics import multilabel_metrics
from emodifftalk.text2au.losses import text2au_loss
from emodifftalk.text2au.predict import INFO_FILE, build_text2au_model
from emodifftalk.text2au.tuned_top import MemberTops
from emodifftalk.train.loop import check_run_dir, run_training
from emodifftalk.train.task import Task, Validation, register_task
from emodifftalk.train.tasks.text2au_tune import tune_member_tops
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

_EPOCH_KEY = 7_919_003  # generator key for the per-epoch shuffle (cannot collide with a rank)


@dataclass
class SplitTensors:
    ids: list[str]
    anchor: Tensor  # (N, D)
    positives: Tensor  # (N, 3, D)
    negatives: Tensor  # (N, 3, D)
    labels: Tensor  # (N, 17) float 0/1
    fold: Tensor  # (N,) long: concept fold (training split), -1 elsewhere

    def __len__(self) -> int:
        return len(self.ids)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


class Text2AUTask(Task):
    name = "text2au"
    ema = False

    def __init__(self, cfg: Config, data_path: str | Path | None = None, cache_dir: str | Path | None = None,
                 split_seed: int = 0, encoder: TextEncoder | None = None):
        super().__init__(cfg)
        self.data_path = Path(data_path) if data_path else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.split_seed = split_seed
        self.encoder = encoder
        self._splits: dict[str, SplitTensors] | None = None
        self._cache = None  # FeatureCache / _MemoryCache / _TunedFeatures after prepare(): clauses go through it
        self._tops: MemberTops | None = None  # tuned MiniLM top layers (text2au.finetune_layers)
        self._entries: dict[str, list[Entry]] | None = None
        self.data_sha256: str | None = None

    # ---- data ------------------------------------------------------------------------------------

    def entries(self) -> dict[str, list[Entry]]:
        if self._entries is None:
            self.data_sha256 = data_fingerprint(self.data_path)  # of the file as read now, not at export
            self._entries = split_entries(load_entries(self.data_path), self.split_seed)
            if not self._entries["train"]:
                raise ValueError(f"the train split of {self.data_path or 'the shipped data set'} is empty")
        return self._entries

    def n_train(self) -> int:
        return len(self.entries()["train"])

    def _encoder(self) -> TextEncoder:
        cfg = self.cfg
        if self.encoder is None:
            self.encoder = build_encoder(cfg.text2au)
        kind = self.encoder.encoder_id.split(":", 1)[0]
        if kind != cfg.text2au.encoder:
            raise EncoderMismatchError(f"text2au.encoder={cfg.text2au.encoder} but the task was given a "
                                       f"{self.encoder.encoder_id!r} encoder")
        return self.encoder

    def prepare(self) -> dict[str, SplitTensors]:
        """Encode every text of every split once (feature cache in ``cache_dir`` when given)."""
        if self._splits is not None:
            return self._splits
        cfg = self.cfg
        enc = self._encoder()
        t0 = time.perf_counter()
        if cfg.text2au.finetune_layers:
            cache = self._tune_tops(enc)
        else:
            cache = FeatureCache(self.cache_dir, enc) if self.cache_dir else _MemoryCache(enc)
        out = {}
        members = cfg.text2au.members
        for split, entries in self.entries().items():
            if not entries:
                out[split] = SplitTensors([], *(torch.zeros(0, *s) for s in
                                                ((enc.dim,), (3, enc.dim), (3, enc.dim), (len(AU_NAMES),))),
                                          fold=torch.zeros(0, dtype=torch.long))
                continue
            if split == "train" and members > 1:
                fold = torch.tensor(concept_folds(entries, members, self.split_seed), dtype=torch.long)
            else:
                fold = torch.full((len(entries),), -1, dtype=torch.long)
            n = len(entries)
            texts = [e.description for e in entries]
            texts += [p for e in entries for p in e.positives]
            texts += [t for e in entries for t in e.negatives]
            feats = cache.encode(texts)
            rest = feats.shape[1:]  # (D,) or (K, D): one feature per member (tuned tops)
            out[split] = SplitTensors(
                ids=[e.id for e in entries], anchor=feats[:n],
                positives=feats[n:4 * n].reshape(n, 3, *rest), negatives=feats[4 * n:].reshape(n, 3, *rest),
                labels=torch.tensor([e.aus for e in entries], dtype=torch.float32), fold=fold)
        cache.save()
        self._cache = cache
        log.info("text2au: encoded %s with %s in %.1fs", {k: len(v) for k, v in out.items()}, enc.encoder_id,
                 time.perf_counter() - t0)
        self._splits = out
        return out

    def _tune_tops(self, enc: TextEncoder) -> _TunedFeatures:
        """Tune every member's copy of MiniLM's top layers on its training rows
        (:mod:`emodifftalk.train.tasks.text2au_tune`); returns the features they give."""
        t = self.cfg.text2au
        if t.members < 2:
            raise ValueError("text2au.finetune_layers needs text2au.members >= 2 (the concept folds keep "
                             "the calibration out-of-concept)")
        entries = self.entries()["train"]
        fold = torch.tensor(concept_folds(entries, t.members, self.split_seed), dtype=torch.long)
        texts = [e.description for e in entries] + [p for e in entries for p in e.positives]
        labels = torch.tensor([e.aus for e in entries], dtype=torch.float32)
        P = len(entries[0].positives)
        tops = MemberTops(t.members, t.finetune_layers, t.minilm_layers)
        tops.load_pretrained(enc)
        features = _TunedFeatures(enc, tops)
        tune_member_tops(tops, features.states(texts), torch.cat([labels, labels.repeat_interleave(P, dim=0)]),
                         torch.cat([fold, fold.repeat_interleave(P)]), t, self.cfg.train.weight_decay,
                         self.cfg.train.seed)
        self._tops = tops
        return features

    # ---- Task protocol -----------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        model = build_text2au_model(self.cfg.text2au, self.encoder.dim if self.encoder is not None else None)
        if self.cfg.text2au.finetune_layers:  # the tuned tops are part of the export, fixed from here on
            if self._tops is None:
                self.prepare()
            model.tops.load_state_dict(self._tops.state_dict())
            model.tops.requires_grad_(False)
        return model

    def train_batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[dict]:
        """Epoch-wise shuffles (same permutation on every rank, from ``(seed, epoch)``); each rank
        takes every ``world_size``-th row of the global batch. Batch ``i`` depends only on
        ``(seed, rank, i)``, so resuming at ``start_step`` continues the exact sequence."""
        cfg = self.cfg
        data = self.prepare()["train"]
        n = len(data)
        gb = cfg.data.batch_size
        spe = steps_per_epoch(n, gb)
        expected = cfg.text2au.epochs * spe
        if cfg.train.max_steps != expected:
            log.info("text2au: train.max_steps=%d (text2au.epochs=%d would be %d steps of batch %d)",
                     cfg.train.max_steps, cfg.text2au.epochs, expected, gb)
        i = start_step
        perm_epoch, perm = -1, None
        while True:
            epoch, j = divmod(i, spe)
            if epoch != perm_epoch:
                perm = torch.randperm(n, generator=torch_generator(seed, _EPOCH_KEY, epoch))
                perm_epoch = epoch
            chunk = perm[j * gb:(j + 1) * gb]
            idx = chunk[rank::world_size]
            if idx.numel() == 0:  # last partial batch smaller than the world: repeat a row
                idx = chunk[rank % chunk.numel():][:1]
            yield {"anchor": data.anchor[idx], "positives": data.positives[idx],
                   "negatives": data.negatives[idx], "labels": data.labels[idx], "fold": data.fold[idx]}
            i += 1

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        t = self.cfg.text2au
        a, pos, neg, y, fold = batch["anchor"], batch["positives"], batch["negatives"], batch["labels"], batch["fold"]
        B, P = pos.shape[:2]
        M, D = neg.shape[1], pos.shape[-1]
        rest = pos.shape[2:]  # (D,) or (K, D): one feature per member (tuned tops)
        feats = torch.cat([a, pos.reshape(B * P, *rest), neg.reshape(B * M, *rest)])
        if t.feature_noise > 0:  # noise of expected norm feature_noise on unit vectors
            noise = torch.randn_like(feats) * (t.feature_noise / D ** 0.5)
            feats = nn.functional.normalize(feats + noise, dim=-1)
        n_lab = B + B * P if t.bce_on_positives else B  # paraphrases share the anchor's labels
        labels = torch.cat([y, y.repeat_interleave(P, dim=0)])[:n_lab]
        row_fold = torch.cat([fold, fold.repeat_interleave(P)])[:n_lab]
        mixed = concept_mixup(feats[:n_lab], labels, row_fold, t.mixup) if t.mixup > 0 else None
        if mixed is not None:  # extra labelled rows after the contrastive ones
            feats = torch.cat([feats, mixed[0]])
        out = model(feats)
        logits, z = out["member_logits"], out["member_z"]  # (K, rows, 17), (K, rows, proj)
        K = logits.shape[0]
        members = torch.arange(K, device=fold.device)[:, None]
        # member k never sees concept fold k; members are folded into the batch dimension
        label_weight = row_fold[None] != members  # (K, n_lab)
        lab_logits = logits[:, :n_lab]
        if mixed is not None:
            _, mix_labels, mix_folds = mixed
            n_con = B * (1 + P + M)
            lab_logits = torch.cat([lab_logits, logits[:, n_con:]], dim=1)
            labels = torch.cat([labels, mix_labels])
            # a blend is out of bounds for a member that may not see either of its concepts
            label_weight = torch.cat([label_weight, (mix_folds[None] != members[..., None]).all(-1)], dim=1)
        n_rows = lab_logits.shape[1]
        return text2au_loss(
            lab_logits.reshape(K * n_rows, -1), labels.repeat(K, 1),
            z[:, :B].reshape(K * B, -1), z[:, B:B + B * P].reshape(K * B, P, -1),
            z[:, B + B * P:B * (1 + P + M)].reshape(K * B, M, -1), t,
            label_weight=label_weight.reshape(-1), anchor_weight=(fold[None] != members).reshape(-1))

    @torch.no_grad()
    def split_metrics(self, model: nn.Module, split: str, thresholds=None) -> dict | None:
        """Metrics of the ensemble on a split (``thresholds``: the (whole, composed) per-AU
        calibration, else the plain threshold)."""
        cfg = self.cfg
        data = self.prepare()[split]
        if len(data) == 0:
            return None
        if cfg.text2au.compose == "none":
            device = next(model.parameters()).device
            probs = torch.sigmoid(model(data.anchor.to(device))["logits"].float()).cpu().numpy()
            composed = np.zeros(len(data), dtype=bool)
        else:  # the ensemble's probability is the mean of its members'
            texts = [e.description for e in self.entries()[split]]
            probs, composed = compose_probs(texts, lambda parts: self._member_probs(model, parts).mean(0),
                                            cfg.text2au.compose)
        if thresholds is not None:
            probs = apply_by_reading(probs, *thresholds, composed, cfg.text2au.threshold)
        return multilabel_metrics(probs, data.labels.numpy(), cfg.text2au.threshold)

    @torch.no_grad()
    def out_of_fold(self, model: nn.Module) -> tuple | None:
        """(probs, labels, folds, composed) of the training anchors and paraphrases, each row
        predicted by the member that never saw its concept fold (clause by clause where
        ``text2au.compose`` reads it so: ``composed``); ``None`` for a single-member model."""
        data = self.prepare()["train"]
        t = self.cfg.text2au
        if t.members < 2 or len(data) == 0:
            return None
        n, P = data.positives.shape[:2]
        folds = torch.cat([data.fold, data.fold.repeat_interleave(P)])
        labels = torch.cat([data.labels, data.labels.repeat_interleave(P, dim=0)]).numpy()
        if t.compose == "none":
            device = next(model.parameters()).device
            feats = torch.cat([data.anchor, data.positives.reshape(n * P, *data.positives.shape[2:])]).to(device)
            probs = model.member_probs(feats).cpu()[folds, torch.arange(len(folds))].numpy()
            return probs, labels, folds.numpy(), np.zeros(len(folds), dtype=bool)
        entries = self.entries()["train"]
        texts = [e.description for e in entries] + [p for e in entries for p in e.positives]
        probs = np.zeros(labels.shape, dtype=np.float64)
        composed = np.zeros(len(texts), dtype=bool)
        for k in range(t.members):
            rows = torch.nonzero(folds == k).flatten().numpy()
            if rows.size:
                probs[rows], composed[rows] = compose_probs(
                    [texts[i] for i in rows], lambda parts, k=k: self._member_probs(model, parts)[k], t.compose)
        self._cache.save()  # the clauses' features, for the next run on this folder
        return probs, labels, folds.numpy(), composed

    @torch.no_grad()
    def _member_probs(self, model: nn.Module, texts: list[str]) -> np.ndarray:
        """(K, N, 17) every member's probabilities for texts (features through the task's cache)."""
        feats = self._cache.encode(texts).to(next(model.parameters()).device)
        return model.member_probs(feats).cpu().numpy()

    def validate(self, model: nn.Module, step: int) -> Validation:
        m = self.split_metrics(model, "val")
        return Validation(_flat_metrics(m) if m else {})

    def export_extra(self, model: nn.Module, out_dir: Path) -> None:
        cfg = self.cfg
        enc = self._encoder()
        entries = self.entries()
        oof = self.out_of_fold(model)
        thresholds, cv = None, None
        if oof is not None:
            probs, labels, folds, composed = oof
            # thresholds per reading (whole / in clauses), or one for both
            groups = composed if cfg.text2au.threshold_by_reading else np.zeros_like(composed)
            if cfg.text2au.calibration != "none":
                thresholds = calibrate_by_reading(probs, labels, groups, cfg.text2au.threshold,
                                                  mode=cfg.text2au.calibration)
            res = concept_cv(probs, labels, folds, composed=groups,
                             mode="global" if cfg.text2au.calibration == "none" else cfg.text2au.calibration)
            cv = {"n_folds": res["n_folds"], "n_rows": len(probs), "n_rows_composed": int(composed.sum()),
                  "at_0.5": _flat_metrics(res["at_0.5"]), "calibrated": _flat_metrics(res["calibrated"]),
                  "per_fold": res["per_fold"]}
        metrics = {s: _flat_metrics(self.split_metrics(model, s, thresholds)) for s in ("val", "test")
                   if self._splits is not None and len(self._splits[s])}
        path = self.data_path.resolve() if self.data_path else None
        info = {
            "encoder": cfg.text2au.encoder, "encoder_id": enc.encoder_id, "encoder_dim": enc.dim,
            "threshold": cfg.text2au.threshold, "au_names": list(AU_NAMES),
            "au_thresholds": None if thresholds is None else [round(float(v), 4) for v in thresholds[0]],
            "au_thresholds_composed": None if thresholds is None else [round(float(v), 4) for v in thresholds[1]],
            "members": cfg.text2au.members, "compose": cfg.text2au.compose,
            "data_path": str(path) if path else None, "data_sha256": self.data_sha256,
            "data_version": DATA_VERSION, "split_seed": self.split_seed,
            "n_entries": {s: len(v) for s, v in entries.items()}, "metrics": metrics, "concept_cv": cv,
        }
        atomic_write_text(Path(out_dir) / INFO_FILE, json.dumps(info, indent=2, sort_keys=True))


def concept_mixup(feats: Tensor, labels: Tensor, folds: Tensor, rate: float) -> tuple[Tensor, Tensor, Tensor] | None:
    """Blends of two labelled rows with different AU sets: up to ``round(rate * rows)`` extra rows.

    A blend's feature is the re-normalised sum of the two unit features and its label the union
    of their AUs. With token-mean pooling, the feature of "A and B" is close to a weighted mean of
    the features of A and B, so a blend stands in for a description of both expressions at once:
    combinations the data set never spelled out. Returns (feats (R, D), labels (R, 17), folds
    (R, 2)) or ``None`` when no pair differs.
    """
    n = feats.shape[0]
    r = int(round(rate * n))
    if n < 2 or r < 1:
        return None
    i = torch.randint(n, (r,), device=feats.device)
    j = torch.randint(n, (r,), device=feats.device)
    keep = (labels[i] != labels[j]).any(-1)
    if not keep.any():
        return None
    i, j = i[keep], j[keep]
    mixed = nn.functional.normalize(feats[i] + feats[j], dim=-1)
    return mixed, torch.maximum(labels[i], labels[j]), torch.stack([folds[i], folds[j]], dim=-1)


class _TunedFeatures:
    """FeatureCache stand-in for tuned tops: (N, K, D) features; the frozen layers' token states of
    each text are kept in memory (tuning and the feature tables read the same texts)."""

    def __init__(self, encoder: TextEncoder, tops: MemberTops):
        self.encoder, self.tops = encoder, tops
        self._states: dict[str, tuple[Tensor, Tensor]] = {}

    def states(self, texts: list[str]) -> TokenStates:
        missing = sorted(set(texts) - self._states.keys())
        if missing:
            new = self.encoder.token_states(missing, self.tops.first - 1)
            self._states.update(zip(missing, zip(new.hidden, new.frozen)))
        rows = [self._states[t] for t in texts]
        return TokenStates([h for h, _ in rows], torch.stack([f for _, f in rows]))

    def encode(self, texts: list[str]) -> Tensor:
        uniq = sorted(set(texts))
        feats = self.tops.features(self.states(uniq))
        pos = {t: i for i, t in enumerate(uniq)}
        return feats[torch.tensor([pos[t] for t in texts], dtype=torch.long)]

    def save(self) -> None:
        pass


class _MemoryCache:
    """FeatureCache stand-in when no cache directory is given."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder

    def encode(self, texts: list[str]) -> Tensor:
        uniq = sorted(set(texts))
        feats = self.encoder.encode(uniq)
        pos = {t: i for i, t in enumerate(uniq)}
        return feats[torch.tensor([pos[t] for t in texts], dtype=torch.long)]

    def save(self) -> None:
        pass


def _flat_metrics(m: dict) -> dict[str, float]:
    out = {"accuracy": m["accuracy"], "exact_match": m["exact_match"]}
    for avg in ("macro", "micro"):
        for k, v in m[avg].items():
            if v is not None:
                out[f"{k}_{avg}"] = v
    return out


register_task("text2au", Text2AUTask)


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Temporarily set torch's intra-op thread count (restored afterwards).

    The Text-to-AU head is a ~0.1M-parameter MLP on batches of a few dozen rows: extra intra-op
    threads only add synchronisation, and on a busy CPU they are catastrophic. Measured with
    benchmarks/bench_text2au.py on the shared 2-core dev box (load ~10): head step 9.5 ms with
    1 thread vs 262 ms with 2; MiniLM encoding 82 vs 27 texts/s.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_text2au(cfg: Config, out_dir: str | Path, data: str | Path | None = None,
                  resume: str | None = None, encoder: TextEncoder | None = None, threads: int = 1) -> dict:
    """Train with the epoch-based schedule; returns a summary (export dir, steps, seconds, metrics).

    ``threads``: torch intra-op threads while encoding the texts and optimising (see
    :func:`intra_op_threads`); restored afterwards.
    """
    out_dir = Path(out_dir)
    check_run_dir(out_dir, resume)  # before the texts are encoded (about a minute)
    task = Text2AUTask(cfg, data_path=data, cache_dir=out_dir / "features", encoder=encoder)
    cfg.train.max_steps = cfg.text2au.epochs * steps_per_epoch(task.n_train(), cfg.data.batch_size)
    cfg.validate()
    t0 = time.perf_counter()
    with intra_op_threads(threads):
        task.prepare()
        encode_seconds = time.perf_counter() - t0
        export_dir = run_training(task, out_dir, resume=resume)
    seconds = time.perf_counter() - t0
    info = json.loads((export_dir / INFO_FILE).read_text()) if (export_dir / INFO_FILE).is_file() else {}
    return {"export_dir": str(export_dir), "steps": cfg.train.max_steps, "epochs": cfg.text2au.epochs,
            "batch_size": cfg.data.batch_size, "seconds": round(seconds, 2),
            "encode_seconds": round(encode_seconds, 2),
            "encoder_id": info.get("encoder_id"), "metrics": info.get("metrics", {}),
            "concept_cv": {k: v for k, v in (info.get("concept_cv") or {}).items() if k != "per_fold"}}


__all__ = ["SPLITS", "Text2AUTask", "steps_per_epoch", "train_text2au"]
