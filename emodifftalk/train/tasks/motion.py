"""Training task ``motion``: the AU-prompt Gaussian diffusion over per-vertex offsets (paper supp.
§2, eq. 12–18), or a peer baseline on the same shards with the same losses and optimiser
(``motion.model``, see ``motion/methods.py``): ``regression`` (= ``diffusion.regression=true``, the
same backbone, no noise, one forward pass) or ``faceformer`` (audio only, autoregressive decoder
trained with teacher forcing and one-pass self-feeding, ``faceformer.self_feed_prob``).

Data: ``seq`` shards of ``cfg.data.root`` (split ``train``) with tracked meshes, cropped to
``data.window_frames``; templates from the ``template`` shards. Per sample:

* target x0 = (verts − template) / offset_scale (diffusion units; padded frames are 0);
* conditions: ground-truth AUs with OpenFace-masked entries set to 0, and audio features — the
  shard's cached ``feats`` when they were made by the configured encoder, otherwise computed here
  from the **whole** clip (the mel front end normalises per utterance) before cropping;
* diffusion: t ~ U{0..N−1}, x_t = q_sample(x0, t, ε), condition dropped with probability
  ``diffusion.cond_dropout`` (classifier-free guidance), the audio alone with probability
  ``diffusion.audio_dropout`` (so the AU codes must explain the motion too: edits then work), the
  network predicts x0, loss = eq. 17 plus eq. (22) L_dist on the prediction in metres (the
  predicted offsets are what moves the rig's facial Gaussians; ``diffusion.lambda_move``), plus
  ``diffusion.lambda_au_fields`` × the edit fields' fit (codes alone → offsets, on frames with
  labels of rows whose condition was kept; ``motion/denoiser.py``). The fit's whitening and the
  edit de-attenuation come from the training labels (``label_statistics``).

``offset_scale`` (metres per diffusion unit) is ``diffusion.offset_scale`` or, when that is 0, the
RMS offset over the ``face`` vertices of the first training clips in manifest order (the same on
every rank). It lives in the model as a buffer, so exports carry it.

Resume: the sample stream is a resampled (endless) stream seeded by (train.seed, rank, worker) and
re-seeded with the resumed batch count, so a resumed run is deterministic but does not replay the
exact samples an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from emodifftalk.config import Config
from emodifftalk.data.shards import (SkipStats, collate_sequences, crop_sequence, iter_dataset, shard_urls,
                                    stream_samples)
from emodifftalk.diffusion.schedule import NoiseSchedule
from emodifftalk.eval.metrics import motion_metrics, mouth_opening
from emodifftalk.losses.feature_line import distance_loss
from emodifftalk.losses.geometry import deformation_loss, geometry_loss, lip_gap_weights
from emodifftalk.models.audio_frontend import encoder_id
from emodifftalk.motion.au_calibration import deattenuation_matrix, whitening
from emodifftalk.motion.data import ClipFeatures, TemplateInfo, load_template_infos, usable_reason
from emodifftalk.motion.methods import build_motion_model, method_of, predict_offsets
from emodifftalk.train.data_check import check_training_shards
from emodifftalk.train.speech_augment import augment_sample
from emodifftalk.train.task import Task, Validation, register_task
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

MOTION_META_FILE = "motion.json"
SCALE_ESTIMATE_CLIPS = 32
CALIBRATION_CLIPS = 256  # training clips whose labels estimate the AU edit de-attenuation
VAL_CLIPS = 4
VAL_NOISE_LEVELS = (0.1, 0.5, 0.9)  # fractions of the chain for the fixed-noise validation loss


# --------------------------------------------------------------------------------------------
# Templates and samples
# --------------------------------------------------------------------------------------------


def add_template_fields(batch: dict, templates: dict[str, TemplateInfo]) -> dict:
    """Adds ``identity`` [B], ``template`` (B, V, 3), the distinct ``template_unique`` (U, V, 3)
    with ``template_index`` (B,) into it, and ``lip_mask`` (B, V) bool to a collated batch."""
    ids = [m["identity"] for m in batch["meta"]]
    tpl = [templates[i] for i in ids]
    v = tpl[0].num_vertices
    batch["identity"] = ids
    batch["template"] = torch.from_numpy(np.stack([t.verts for t in tpl]))
    unique = list(dict.fromkeys(ids))
    batch["template_unique"] = torch.from_numpy(np.stack([templates[i].verts for i in unique]))
    batch["template_index"] = torch.tensor([unique.index(i) for i in ids], dtype=torch.long)
    lip = torch.zeros(len(ids), v, dtype=torch.bool)
    for b, t in enumerate(tpl):
        lip[b, torch.from_numpy(t.lip_idx)] = True
    batch["lip_mask"] = lip
    return batch


class MotionBatches(torch.utils.data.IterableDataset):
    """Endless collated training batches (one instance per rank; DataLoader workers allowed).

    Samples are bucketed by vertex count so a batch never mixes topologies of different sizes.
    """

    def __init__(self, urls: list[str], templates: dict[str, TemplateInfo], cfg: Config, seed: int,
                 rank: int, epoch: int, stats, unusable):
        self.urls, self.templates, self.cfg = urls, templates, cfg
        self.seed, self.rank, self.epoch = int(seed), int(rank), int(epoch)
        self.stats, self.unusable = stats, unusable

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        cfg = self.cfg
        stream = stream_samples(self.urls, shuffle_buffer=cfg.data.shuffle_buffer, resampled=True,
                                seed=self.seed * 1009 + self.rank, stats=self.stats, epoch=self.epoch)
        rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch])
        feats = ClipFeatures(cfg.audio)
        buckets: dict[int, list[dict]] = {}
        for sample in stream:
            reason = usable_reason(sample, self.templates, cfg.diffusion.fps)
            if reason is not None:
                self.unusable.skip(sample.get("key"), None, reason)
                continue
            sample = augment_sample(sample, rng, cfg.audio, silence=False)  # meshes stay aligned
            sample = dict(sample, feats=feats(sample))  # whole clip, before cropping
            crop = crop_sequence(sample, cfg.data.window_frames, rng, feature_rate=cfg.audio.feature_rate)
            bucket = buckets.setdefault(crop["verts"].shape[1], [])
            bucket.append(crop)
            if len(bucket) == cfg.data.batch_size:
                batch = add_template_fields(collate_sequences(bucket), self.templates)
                buckets[crop["verts"].shape[1]] = []
                yield batch


def estimate_offset_scale(root: str | Path, templates: dict[str, TemplateInfo],
                          max_clips: int = SCALE_ESTIMATE_CLIPS) -> float:
    """RMS per-coordinate offset over the ``face`` vertices of the first training clips (metres)."""
    sq, count = 0.0, 0
    for sample in iter_dataset(root, "seq", "train"):
        t = templates.get(sample["meta"].get("identity"))
        v = sample.get("verts")
        if t is None or v is None or v.shape[1] != t.num_vertices:
            continue
        off = (v[:, t.face_idx] - t.verts[t.face_idx]).astype(np.float64)
        sq += float(np.square(off).sum())
        count += off.size
        max_clips -= 1
        if max_clips <= 0:
            break
    if count == 0:
        raise ValueError(f"no training clip with meshes and a template in {root}: cannot estimate "
                         "diffusion.offset_scale (set it explicitly, e.g. diffusion.offset_scale=0.002)")
    return max(float(np.sqrt(sq / count)), 1e-5)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class MotionTask(Task):
    name = "motion"
    ema = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.stats = SkipStats()  # unreadable shards / corrupt samples
        self.unusable = SkipStats(max_logged=20)  # decodable but unusable (no meshes, no template, fps)
        self.schedule = NoiseSchedule.from_config(cfg.diffusion)
        # read from the shards on first use (cheap to build the task, e.g. to load an export)
        self._templates: dict[str, TemplateInfo] | None = None
        self._scale: float | None = None
        self._val: list[dict] | None = None
        self._label_stats: dict[str, np.ndarray] | None = None
        self._calibrated = False  # the model's label-statistics buffers are set

    # ---- set-up ------------------------------------------------------------------------------------

    def _data_root(self) -> str:
        root = getattr(self.cfg.data, "root", "")
        if not root:
            raise ValueError("the motion task needs packed shards: set data.root=/path/to/shards")
        return root

    def templates(self) -> dict[str, TemplateInfo]:
        if self._templates is None:
            self._templates = load_template_infos(self._data_root())
        return self._templates

    def offset_scale(self) -> float:
        if self.cfg.diffusion.offset_scale > 0:
            return float(self.cfg.diffusion.offset_scale)
        if self._scale is None:
            self._scale = estimate_offset_scale(self._data_root(), self.templates())
            log.info("diffusion.offset_scale estimated from training data: %.6f m", self._scale)
        return self._scale

    def _ensure_offset_scale(self, model: nn.Module) -> float:
        m = _unwrap(model)
        if float(m.offset_scale) <= 0:
            m.offset_scale.fill_(self.offset_scale())
        if self.cfg.diffusion.lambda_au_fields > 0 and hasattr(m, "au_deattenuation") and not self._calibrated:
            stats = self.label_statistics()  # the same before the first step and on resume
            for name in ("au_deattenuation", "au_mean", "au_whitening"):
                getattr(m, name).copy_(torch.from_numpy(stats[name]))
            self._calibrated = True
        return float(m.offset_scale)

    def label_statistics(self) -> dict[str, np.ndarray]:
        """The AU-fields buffers from the training labels (``motion/au_calibration.py``): the edit
        de-attenuation matrix, the codes' mean and whitening."""
        if self._label_stats is None:
            labels, masks = [], []
            for sample in iter_dataset(self._data_root(), "seq", "train"):
                if sample.get("aus") is None:
                    continue
                labels.append(sample["aus"] * sample["au_mask"])
                masks.append(sample["au_mask"].astype(bool))
                if len(labels) >= CALIBRATION_CLIPS:
                    break
            if not labels:
                raise ValueError(f"no training clip with AU labels in {self._data_root()}")
            mean, white = whitening(labels, masks)
            self._label_stats = {"au_deattenuation": deattenuation_matrix(labels, masks), "au_mean": mean,
                                 "au_whitening": white}
            log.info("AU edit de-attenuation from %d training clips: diagonal %s", len(labels),
                     np.round(np.diag(self._label_stats["au_deattenuation"]).astype(float), 2).tolist())
        return self._label_stats

    # ---- Task protocol -------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        # offset_scale 0 = "not yet estimated"; set on the first loss/validate call (exports carry it)
        return build_motion_model(self.cfg, offset_scale=self.cfg.diffusion.offset_scale)

    def train_batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[dict]:
        cfg = self.cfg
        root = self._data_root()
        urls = shard_urls(root, "seq", "train")
        if not urls:
            raise ValueError(f"no train seq shards in {root}")
        templates = self.templates()
        self.offset_scale()  # estimate once, before any worker starts
        ds = MotionBatches(urls, templates, cfg, seed, rank, start_step, self.stats, self.unusable)
        if cfg.data.num_workers > 0:
            return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.data.num_workers))
        return iter(ds)

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        d = self.cfg.diffusion
        scale = self._ensure_offset_scale(model)
        verts, template = batch["verts"], batch["template"]
        fmask = batch["frame_mask"]
        b = fmask.shape[0]
        x0 = (verts - template[:, None]) / scale * fmask[:, :, None, None].to(verts.dtype)
        aus = batch["aus"] * batch["au_mask"].to(batch["aus"].dtype)
        feats = batch.get("feats")
        if method_of(self.cfg) == "faceformer":
            return self._faceformer_loss(model, x0, batch, fmask)
        if d.regression:
            n = torch.zeros(b, dtype=torch.long, device=x0.device)
            # never dropped, but passed so the null embedding stays in the graph (DDP needs every
            # parameter to take part in each step unless find_unused_parameters is set)
            x_n, drop = torch.zeros_like(x0), torch.zeros(b, dtype=torch.bool, device=x0.device)
        else:
            n = torch.randint(0, d.num_train_steps, (b,), device=x0.device)
            x_n = self.schedule.q_sample(x0, n, torch.randn_like(x0))
            drop = torch.rand(b, device=x0.device) < d.cond_dropout
        drop_audio = torch.rand(b, device=x0.device) < d.audio_dropout
        fit_fields = d.lambda_au_fields > 0
        pred = model(x_n, batch["template_unique"], aus, feats, n, drop_cond=drop, frame_mask=fmask,
                     template_index=batch["template_index"], drop_audio=drop_audio, au_path=fit_fields)
        if fit_fields:
            pred, fields_fit = pred
        terms = self._geometry(pred.float(), x0, batch, fmask)
        # eq. (22) on the real frames' predicted offsets in metres, (N, V, 3); logged unweighted
        terms["move"] = distance_loss((pred.float() * scale)[fmask.bool()], d.move_tau, weight=1.0)
        out = {"loss": terms.pop("geometry") + d.lambda_move * terms["move"]}
        if fit_fields:
            # frames with labels (tracker failures have all-zero codes) of rows whose codes were kept
            rows = fmask.bool() & batch["au_mask"].bool().any(-1) & ~drop[:, None]
            terms["au_fields"] = (fields_fit.float() - x0)[rows].square().mean() if rows.any() \
                else fields_fit.sum() * 0.0
            out["loss"] = out["loss"] + d.lambda_au_fields * terms["au_fields"]
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def _faceformer_loss(self, model: nn.Module, x0: Tensor, batch: dict, fmask: Tensor) -> dict:
        """Eq. 17 on teacher-forced predictions; with probability ``faceformer.self_feed_prob`` the
        decoder is fed its own (no-grad) teacher-forced predictions instead of the true frames."""
        fed = x0
        if torch.rand(()) < self.cfg.faceformer.self_feed_prob:
            with torch.no_grad():
                fed = model(x0, batch["template"], batch["feats"], frame_mask=fmask).detach()
        pred = model(fed, batch["template"], batch["feats"], frame_mask=fmask)
        terms = self._geometry(pred.float(), x0, batch, fmask)
        out = {"loss": terms.pop("geometry")}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def _geometry(self, pred: Tensor, x0: Tensor, batch: dict, fmask: Tensor) -> dict:
        """Eq. 17 in diffusion units; L_deform per topology group when a batch mixes templates."""
        cfg = self.cfg
        templates = self.templates()
        infos = [templates[i] for i in batch["identity"]]
        same = len({i.topology for i in infos}) == 1
        gap = lip_gap_weights(batch["template"], batch["lip_mask"]) if cfg.diffusion.lambda_lip_gap > 0 else None
        terms = geometry_loss(pred, x0, lip_mask=batch["lip_mask"], edges=infos[0].laplacian if same else None,
                              weights=cfg.diffusion, frame_mask=fmask, lip_gap=gap)
        if not same:
            num, den = pred.sum() * 0.0, 0.0
            for topo in {i.topology for i in infos}:
                idx = [k for k, i in enumerate(infos) if i.topology == topo]
                w = float(fmask[idx].sum())
                num = num + w * deformation_loss(pred[idx], infos[idx[0]].laplacian, fmask[idx])
                den += w
            terms["deform"] = num / max(den, 1.0)
            terms["geometry"] = terms["geometry"] + cfg.diffusion.lambda_deform * terms["deform"]
        return terms

    # ---- validation ------------------------------------------------------------------------------------

    def _val_clips(self) -> list[dict]:
        """Up to VAL_CLIPS usable val clips (full length, features computed), cached."""
        if self._val is not None:
            return self._val
        cfg = self.cfg
        root = self._data_root()
        templates = self.templates()
        clips: list[dict] = []
        if shard_urls(root, "seq", "val"):
            feats = ClipFeatures(cfg.audio)
            for s in iter_dataset(root, "seq", "val"):
                if usable_reason(s, templates, cfg.diffusion.fps) is None:
                    clips.append(dict(s, feats=feats(s)))
                if len(clips) >= VAL_CLIPS:
                    break
        if not clips:
            log.warning("no usable val clips in %s: motion validation is skipped", root)
        self._val = clips
        return clips

    @torch.no_grad()
    def validate(self, model: nn.Module, step: int) -> Validation:
        """Fixed-noise denoising errors and sampled-motion metrics over the val clips; media: the
        first clip's mouth opening, captured and sampled."""
        cfg = self.cfg
        clips = self._val_clips()
        if not clips:
            return Validation({})
        scale = self._ensure_offset_scale(model)
        templates = self.templates()
        device = next(model.parameters()).device
        d = cfg.diffusion
        method = method_of(cfg)
        sched = self.schedule if method == "diffusion" else None
        g = torch.Generator().manual_seed(1234)
        out: dict[str, float] = {}
        # fixed-noise denoising error (comparable across steps), diffusion units
        if method == "diffusion":
            levels = {f"x0_mse_t{int(f * 100):02d}": int(f * (d.num_train_steps - 1)) for f in VAL_NOISE_LEVELS}
            for name, tt in levels.items():
                errs = []
                for c in clips:
                    tpl = templates[c["meta"]["identity"]]
                    x0 = torch.from_numpy((c["verts"] - tpl.verts) / scale)[None].float()
                    noise = torch.randn(x0.shape, generator=g)
                    n = torch.tensor([tt])
                    x_n = sched.q_sample(x0, n, noise)
                    aus = torch.from_numpy(c["aus"] * c["au_mask"])[None].float()
                    pred = model(x_n.to(device), torch.from_numpy(tpl.verts)[None].to(device), aus.to(device),
                                 torch.from_numpy(c["feats"])[None].to(device), n.to(device))
                    errs.append(float((pred.float().cpu() - x0).square().sum(-1).mean()))
                out[name] = float(np.mean(errs))
        # sampled motion through the long-sequence path, metrics of DESIGN.md
        preds, gts, tpls, lips, uppers = [], [], [], [], []
        for c in clips:
            tpl = templates[c["meta"]["identity"]]
            aus = torch.from_numpy(c["aus"] * c["au_mask"]).float()
            offsets = predict_offsets(model, cfg, torch.from_numpy(tpl.verts), aus, torch.from_numpy(c["feats"]),
                                      schedule=sched, generator=g, device=device)
            preds.append(tpl.verts[None] + offsets.numpy())
            gts.append(c["verts"])
            tpls.append(tpl.verts)
            lips.append(tpl.lip_idx)
            uppers.append(tpl.upper_idx)
        m = motion_metrics(preds, gts, tpls, lips, uppers)
        out.update({k: m[k] for k in ("lve_mm", "mod", "fdd_abs")})
        return Validation(out, media=(mouth_opening(gts[0], lips[0]), mouth_opening(preds[0], lips[0])))

    def log_media(self, writer, step: int, media) -> None:
        if media is None or writer is None:
            return
        import matplotlib  # plotting only where TensorBoard figures are written

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        gt, pred = media
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.plot(gt * 1000, label="ground truth")
        ax.plot(pred * 1000, label="sampled")
        ax.set_xlabel("frame")
        ax.set_ylabel("mouth opening (mm)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        writer.add_figure("motion/mouth_opening_val0", fig, step)
        plt.close(fig)

    def check_data(self) -> None:
        check_training_shards(self.cfg, self.name, [("seq", "train"), ("template", None)])

    def skip_stats(self) -> dict[str, int]:
        return {"corrupt_samples": self.stats.n_skipped, "unusable_samples": self.unusable.n_skipped}

    def export_extra(self, model: nn.Module, out_dir: Path) -> None:
        cfg = self.cfg
        try:
            enc = encoder_id(cfg.audio)
        except (FileNotFoundError, ValueError) as e:
            enc = f"unavailable: {e}"
        info = {"offset_scale_m": float(model.offset_scale), "fps": model.fps,
                "feature_rate": model.feature_rate, "audio_encoder": enc,
                "regression": bool(cfg.diffusion.regression), "model": method_of(cfg),
                "schedule": {"kind": cfg.diffusion.schedule, "num_train_steps": cfg.diffusion.num_train_steps},
                "output": "per-vertex offsets from the template, metres = model output x offset_scale_m"}
        atomic_write_text(Path(out_dir) / MOTION_META_FILE, json.dumps(info, indent=2, sort_keys=True))


register_task("motion", MotionTask)
