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
from emodifftalk.config import Config, S2AUConfig
from emodifftalk.featurize import FeatureSource
from emodifftalk.train.task import Task, register_task

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
    from emodifftalk.data.shards import collate_sequences

    b = collate_sequences(samples)
    return {"feats": b["feats"], "feats_mask": b["feats_mask"], "aus": b["aus"], "au_mask": b["au_mask"],
            "frame_mask": b["frame_mask"], "n_frames": b["frame_mask"].sum(dim=1),
            "fps": torch.tensor([float(s["meta"]["fps"]) for s in samples], dtype=torch.float32)}


class S2AUBatches(IterableDataset):
    """Endless collated training batches for one rank (each DataLoader worker its own stream)."""

    def __init__(self, cfg: Config, rank: int, seed: int, start_step: int, stats):
        from emodifftalk.distributed.seed import derive_seed

        self.cfg, self.rank, self.start_step, self.stats = cfg, rank, start_step, stats
        self.seed = derive_seed(seed, rank)

    def __iter__(self) -> Iterator[dict]:
        from emodifftalk.data.shards import crop_sequence, shard_urls, stream_samples
        from emodifftalk.train.speech_augment import augment_sample

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
            sample = dict(sample, feats=features(sample), verts=None)
            batch.append(crop_sequence(sample, cfg.data.window_frames, rng,
                                       feature_rate=cfg.audio.feature_rate))
            if len(batch) == cfg.data.batch_size:
                yield collate_s2au(batch)
                batch = []


class S2AUTask(Task):
    name = "s2au"
    ema = False

    def __init__(self):
        from emodifftalk.data.shards import SkipStats

        self.stats = SkipStats()
        self._val: list[dict] | None = None
        # eq. 11 weights from cfg.s2au; loss() gets no cfg, so train_batches() records them
        self._lambdas = (S2AUConfig.lambda_reg, S2AUConfig.lambda_temp)

    # ---- model and data ------------------------------------------------------------------------

    def build_model(self, cfg: Config) -> nn.Module:
        from emodifftalk.models.audio_frontend import feature_dim
        from emodifftalk.models.speech_to_au import SpeechToAU

        return SpeechToAU(cfg.s2au, in_dim=feature_dim(cfg.audio), feature_rate=cfg.audio.feature_rate)

    def train_batches(self, cfg: Config, rank: int, world_size: int, seed: int,
                      start_step: int) -> Iterator[dict]:
        self._lambdas = (cfg.s2au.lambda_reg, cfg.s2au.lambda_temp)
        dataset = S2AUBatches(cfg, rank, seed, start_step, self.stats)
        if cfg.data.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=cfg.data.num_workers,
                               persistent_workers=True))

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        from emodifftalk.losses import speech_to_au_loss

        pred = model(batch["feats"], batch["feats_mask"], n_frames=batch["n_frames"], fps=batch["fps"])
        aus = batch["aus"]
        assert pred.shape == aus.shape, f"prediction {tuple(pred.shape)} vs labels {tuple(aus.shape)}"
        lam_reg, lam_temp = self._lambdas
        return speech_to_au_loss(pred.float(), aus, batch["au_mask"], batch["frame_mask"],
                                 lambda_reg=lam_reg, lambda_temp=lam_temp)

    # ---- validation ------------------------------------------------------------------------------

    def _val_clips(self, cfg: Config) -> list[dict]:
        if self._val is None:
            from emodifftalk.data.shards import iter_dataset, shard_urls

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
    def _predict(self, model: nn.Module, cfg: Config, clip: dict) -> np.ndarray:
        from emodifftalk.models.speech_inference import predict_from_features

        device = next(model.parameters()).device
        return predict_from_features(model, clip["feats"], clip["n_frames"], clip["fps"],
                                     cfg.s2au.window_seconds, cfg.s2au.overlap_seconds, device).numpy()

    def validate(self, model: nn.Module, cfg: Config, step: int) -> dict[str, float]:
        from emodifftalk.eval.au_metrics import AUMetricAccumulator

        self._media_cfg = cfg
        clips = self._val_clips(cfg)
        if not clips:
            return {}
        acc = AUMetricAccumulator(cfg.s2au.binarize_threshold)
        for clip in clips:
            acc.update(self._predict(model, cfg, clip), clip["aus"], clip["au_mask"])
        m = acc.compute()["mean"]
        return {k: v for k, v in (("au_mae", m["mae"]), ("au_pearson", m["pearson"]), ("au_f1", m["f1"]),
                                  ("au_accuracy", m["accuracy"])) if v is not None}

    def log_media(self, model: nn.Module, writer, step: int) -> None:
        """Predicted vs OpenFace AU curves of the first val clip (the 4 AUs that move most)."""
        cfg = getattr(self, "_media_cfg", None)
        if writer is None or cfg is None or not self._val_clips(cfg):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        clip = self._val[0]
        pred = self._predict(model, cfg, clip)
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

    def check_data(self, cfg: Config) -> None:
        from emodifftalk.train.data_check import check_training_shards

        check_training_shards(cfg, self.name, [("seq", "train")])

    def skip_stats(self) -> dict[str, int]:
        return {"corrupt_samples": self.stats.n_skipped}

    def export_extra(self, model: nn.Module, out_dir: Path, cfg: Config) -> None:
        from emodifftalk.models.audio_frontend import encoder_id
        from emodifftalk.models.speech_inference import EXPORT_META
        from emodifftalk.utils import atomic_write_text

        meta = {"in_dim": int(model.in_dim), "feature_rate": float(model.feature_rate),
                "encoder_id": encoder_id(cfg.audio), "frontend": cfg.audio.frontend,
                "au_names": list(AU_NAMES), "n_aus": NUM_AUS}
        atomic_write_text(Path(out_dir) / EXPORT_META, json.dumps(meta, indent=2, sort_keys=True))


register_task("s2au", S2AUTask)
