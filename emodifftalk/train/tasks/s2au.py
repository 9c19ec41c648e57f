"""``s2au`` training task: the Speech-to-AU encoder on ``seq`` shards (paper supp. §2, eq. 9–11).

Data: ``cfg.data.root`` (``--data SHARDS``), split ``train``, an endless resampled shard stream
per rank. Each clip's audio features are the cached ``feats.npy`` written by
``emodifftalk featurize`` when present (its encoder id must equal ``encoder_id(cfg.audio)``,
else :class:`~emodifftalk.featurize.FeatureCacheMismatch`), otherwise the front end runs on the
*whole* clip (so per-utterance normalisation matches inference) before a random
``data.window_frames`` crop. Clips are first augmented (``train/speech_augment.py``: noise,
reverb, level, band limits, resampling, stereo down-mix; added silence labelled "lips closed").
Batches hold features, AU labels and masks; the model pools onto
each clip's own fps.

Resume: the stream for ``start_step`` is seeded by ``(seed, rank, start_step)`` — deterministic,
but not the continuation of the interrupted stream (re-reading shards to fast-forward would cost
as much as the skipped training data).

Validation: all ``val`` clips (full length, windowed inference as at deployment): AU MAE,
Pearson r, binarised accuracy / F1 (``eval.au_metrics``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from emodifftalk.au import AU_NAMES, NUM_AUS
from emodifftalk.config import Config
from emodifftalk.data.shards import (SkipStats, collate_sequences, crop_sequence, iter_dataset, shard_urls,
                                    stream_samples)
from emodifftalk.distributed.seed import derive_seed
from emodifftalk.eval.au_metrics import AUMetricAccumulator
from emodifftalk.featurize import FeatureSource
from emodifftalk.losses import speech_to_au_loss
from emodifftalk.models.audio_frontend import encoder_id, feature_dim
from emodifftalk.s2au.inference import EXPORT_META, predict_from_features
from emodifftalk.s2au.model import SpeechToAU
from emodifftalk.train.data_check import check_training_shards
from emodifftalk.train.speech_augment import augment_features, augment_sample
from emodifftalk.train.task import Task, Validation, register_task
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

MAX_VAL_CLIPS = 256  # validation cost bound; eval s2au covers whole splits


def shards_root(cfg: Config) -> str:
    if not cfg.data.root:
        raise ValueError("the s2au task needs the packed shard folder: pass --data SHARDS "
                         "(or the override data.root=SHARDS)")
    if not Path(cfg.data.root).exists():
        raise FileNotFoundError(f"data.root={cfg.data.root} does not exist")
    return cfg.data.root


def collate_s2au(samples: list[dict]) -> dict:
    """Collated crops -> the tensors the task uses (no audio, no python metadata)."""
    b = collate_sequences(samples)
    return {"feats": b["feats"], "feats_mask": b["feats_mask"], "aus": b["aus"], "au_mask": b["au_mask"],
            "frame_mask": b["frame_mask"], "n_frames": b["frame_mask"].sum(dim=1),
            "fps": torch.tensor([float(s["meta"]["fps"]) for s in samples], dtype=torch.float32)}


class S2AUBatches(IterableDataset):
    """Endless collated training batches for one rank (each DataLoader worker its own stream)."""

    def __init__(self, cfg: Config, rank: int, seed: int, start_step: int, stats):
        self.cfg, self.rank, self.start_step, self.stats = cfg, rank, start_step, stats
        self.seed = derive_seed(seed, rank)

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        urls = shard_urls(shards_root(cfg), "seq", "train")
        if not urls:
            raise ValueError(f"{cfg.data.root} has no seq shards in split 'train'")
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        stream = stream_samples(urls, shuffle_buffer=cfg.data.shuffle_buffer, resampled=True, seed=self.seed,
                                split_by_node=False, split_by_worker=False, stats=self.stats,
                                epoch=self.start_step)
        rng = np.random.default_rng([self.seed, self.start_step, worker])
        features = FeatureSource(cfg)
        batch: list[dict] = []
        for sample in stream:
            sample = augment_sample(sample, rng, cfg.audio, silence=True)  # noise, rooms, silence ...
            sample = dict(sample, feats=augment_features(features(sample), rng, cfg.audio), verts=None)
            batch.append(crop_sequence(sample, cfg.data.window_frames, rng,
                                       feature_rate=cfg.audio.feature_rate))
            if len(batch) == cfg.data.batch_size:
                yield collate_s2au(batch)
                batch = []


class S2AUTask(Task):
    name = "s2au"
    ema = False

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.stats = SkipStats()
        self._val: list[dict] | None = None  # val clips with features, read once
        # AUs with at least one valid label in this rank's batches; the export lists the others
        # (with many steps every rank sees every labelled AU)
        self.au_labelled = torch.zeros(NUM_AUS, dtype=torch.bool)

    # ---- model and data ------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        return SpeechToAU(cfg.s2au, in_dim=feature_dim(cfg.audio), feature_rate=cfg.audio.feature_rate)

    def train_batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[dict]:
        cfg = self.cfg
        dataset = S2AUBatches(cfg, rank, seed, start_step, self.stats)
        if cfg.data.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers,
                               persistent_workers=True))

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        pred = model(batch["feats"], batch["feats_mask"], n_frames=batch["n_frames"], fps=batch["fps"])
        aus = batch["aus"]
        assert pred.shape == aus.shape, f"prediction {tuple(pred.shape)} vs labels {tuple(aus.shape)}"
        self.au_labelled |= batch["au_mask"].bool().flatten(0, -2).any(0).cpu()
        return speech_to_au_loss(pred.float(), aus, batch["au_mask"], batch["frame_mask"],
                                 lambda_reg=self.cfg.s2au.lambda_reg, lambda_temp=self.cfg.s2au.lambda_temp)

    # ---- validation ------------------------------------------------------------------------------

    def _val_clips(self) -> list[dict]:
        cfg = self.cfg
        if self._val is None:
            self._val = []
            root = shards_root(cfg)
            if shard_urls(root, "seq", "val"):
                features = FeatureSource(cfg)
                for s in iter_dataset(root, "seq", "val", stats=self.stats):
                    self._val.append({"key": s["key"], "feats": torch.from_numpy(features(s)),
                                      "aus": s["aus"], "au_mask": s["au_mask"],
                                      "fps": float(s["meta"]["fps"]), "n_frames": int(s["meta"]["n_frames"])})
                    if len(self._val) >= MAX_VAL_CLIPS:
                        break
            if not self._val:
                log.warning("s2au: no val clips in %s; validation metrics are skipped", root)
        return self._val

    @torch.no_grad()
    def _predict(self, model: nn.Module, clip: dict) -> np.ndarray:
        s = self.cfg.s2au
        device = next(model.parameters()).device
        return predict_from_features(model, clip["feats"], clip["n_frames"], clip["fps"],
                                     s.window_seconds, s.overlap_seconds, device).numpy()

    def validate(self, model: nn.Module, step: int) -> Validation:
        """AU metrics over the val clips; media: the first clip and its prediction."""
        clips = self._val_clips()
        if not clips:
            return Validation({})
        acc = AUMetricAccumulator(self.cfg.s2au.binarize_threshold)
        preds = [self._predict(model, clip) for clip in clips]
        for clip, pred in zip(clips, preds):
            acc.update(pred, clip["aus"], clip["au_mask"])
        m = acc.compute()["mean"]
        metrics = {k: v for k, v in (("au_mae", m["mae"]), ("au_pearson", m["pearson"]), ("au_f1", m["f1"]),
                                     ("au_accuracy", m["accuracy"])) if v is not None}
        return Validation(metrics, media=(clips[0], preds[0]))

    def log_media(self, writer, step: int, media) -> None:
        """Predicted vs OpenFace AU curves of the first val clip (the 4 AUs that move most)."""
        if writer is None or media is None:
            return
        import matplotlib  # plotting only where TensorBoard figures are written

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        clip, pred = media
        gt = np.where(clip["au_mask"], clip["aus"], np.nan)
        m = clip["au_mask"]
        spread = np.array([clip["aus"][m[:, k], k].std() if m[:, k].any() else -1.0 for k in range(NUM_AUS)])
        order = np.argsort(-spread)[:4]
        t = np.arange(pred.shape[0]) / clip["fps"]
        fig, axes = plt.subplots(len(order), 1, figsize=(8, 1.6 * len(order)), sharex=True)
        for ax, k in zip(np.atleast_1d(axes), order):
            ax.plot(t, gt[:, k], label="OpenFace", color="k", lw=1)
            ax.plot(t, pred[:, k], label="predicted", color="tab:red", lw=1)
            ax.set_ylabel(AU_NAMES[k])
            ax.set_ylim(-0.05, 1.05)
        np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=7)
        np.atleast_1d(axes)[-1].set_xlabel(f"seconds ({clip['key']})")
        fig.tight_layout()
        writer.add_figure("s2au/val_au_curves", fig, step)
        plt.close(fig)

    def check_data(self) -> None:
        check_training_shards(self.cfg, self.name, [("seq", "train")])

    def skip_stats(self) -> dict[str, int]:
        return {"corrupt_samples": self.stats.n_skipped}

    def export_extra(self, model: nn.Module, out_dir: Path) -> None:
        cfg = self.cfg
        meta = {"in_dim": int(model.in_dim), "feature_rate": float(model.feature_rate),
                "encoder_id": encoder_id(cfg.audio), "frontend": cfg.audio.frontend,
                "au_names": list(AU_NAMES), "n_aus": NUM_AUS}
        if self.au_labelled.any():  # else no step ran here (a finished run resumed): loaders assume OpenFace
            meta["unlabelled_aus"] = [n for n, seen in zip(AU_NAMES, self.au_labelled.tolist()) if not seen]
        atomic_write_text(Path(out_dir) / EXPORT_META, json.dumps(meta, indent=2, sort_keys=True))


register_task("s2au", S2AUTask)
