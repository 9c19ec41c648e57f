"""Training task ``motion``: the AU-prompt Gaussian diffusion over per-vertex offsets (paper supp.
§2, eq. 12–18), or a peer baseline on the same shards with the same losses and optimiser
(``motion.model``, see ``motion_methods.py``): ``regression`` (= ``diffusion.regression=true``, the
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
  predicted offsets are what moves the rig's facial Gaussians; ``diffusion.lambda_move``).

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
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from emodifftalk.config import Config
from emodifftalk.diffusion.schedule import NoiseSchedule
from emodifftalk.losses.feature_line import distance_loss
from emodifftalk.losses.geometry import deformation_loss, geometry_loss, laplacian_matrix, mesh_edges
from emodifftalk.motion_methods import build_motion_model, method_of, predict_offsets
from emodifftalk.train.task import Task, register_task

log = logging.getLogger(__name__)

MOTION_META_FILE = "motion.json"
SCALE_ESTIMATE_CLIPS = 32
VAL_CLIPS = 4
FEATURE_CACHE_CLIPS = 2048  # computed audio features kept per process (use `featurize` for big sets)
VAL_NOISE_LEVELS = (0.1, 0.5, 0.9)  # fractions of the chain for the fixed-noise validation loss


# --------------------------------------------------------------------------------------------
# Templates and samples
# --------------------------------------------------------------------------------------------


@dataclass
class TemplateInfo:
    identity: str
    verts: np.ndarray  # (V, 3) float32
    lip_idx: np.ndarray  # int64
    upper_idx: np.ndarray  # int64
    face_idx: np.ndarray  # int64 (all vertices if the set is missing)
    edges: Tensor  # (E, 2) long
    topology: str  # key shared by templates with identical faces
    laplacian: Tensor | None = None  # sparse (V, V), see losses.geometry.laplacian_matrix

    @property
    def num_vertices(self) -> int:
        return self.verts.shape[0]


def load_template_infos(root: str | Path) -> dict[str, TemplateInfo]:
    """{identity: TemplateInfo} from the template shards of ``root``."""
    from emodifftalk.data.shards import load_templates

    out = {}
    for identity, s in load_templates(root).items():
        verts = np.asarray(s["verts"], dtype=np.float32)
        sets = s["vertex_sets"]
        if len(sets.get("lips", ())) == 0:
            raise ValueError(f"template of {identity} in {root} has no 'lips' vertex set")
        faces = np.asarray(s["faces"], dtype=np.int64)
        v = verts.shape[0]
        face_idx = np.asarray(sets.get("face", np.arange(v)), dtype=np.int64)
        out[identity] = TemplateInfo(
            identity=identity, verts=verts, lip_idx=np.asarray(sets["lips"], dtype=np.int64),
            upper_idx=np.asarray(sets.get("upper_face", face_idx), dtype=np.int64),
            face_idx=face_idx if face_idx.size else np.arange(v),
            edges=mesh_edges(torch.from_numpy(faces)),
            topology=f"{v}:{zlib.crc32(faces.tobytes()):08x}")
        out[identity].laplacian = laplacian_matrix(out[identity].edges, v)
    if not out:
        raise ValueError(f"no template samples in {root}")
    return out


def _feats_encoder(meta) -> str | None:
    if isinstance(meta, dict):
        for key in ("encoder_id", "encoder", "id"):
            if isinstance(meta.get(key), str):
                return meta[key]
    return meta if isinstance(meta, str) else None


class _FeatureMaker:
    """Audio features for a decoded seq sample: the cached ones if they match the encoder, else
    computed from the whole clip with the configured front end (built lazily per process)."""

    def __init__(self, audio_cfg, cache_size: int = FEATURE_CACHE_CLIPS):
        self.audio_cfg = audio_cfg
        self._frontend = None
        self._enc_id = None
        self._warned = False
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # key -> computed features (LRU)
        self.cache_size = int(cache_size)

    def __call__(self, sample: dict) -> np.ndarray:
        from emodifftalk.models.audio_frontend import build_frontend, encoder_id

        if self._enc_id is None:
            self._enc_id = encoder_id(self.audio_cfg)
        feats = sample.get("feats")
        if feats is not None and _feats_encoder(sample.get("feats_meta")) == self._enc_id \
                and feats.shape[1] == self.audio_cfg.feature_dim:
            return feats
        if feats is not None and not self._warned:
            log.warning("cached features of %s were made by %r, not %r: recomputing from audio",
                        sample.get("key"), _feats_encoder(sample.get("feats_meta")), self._enc_id)
            self._warned = True
        key = None if sample.get("augmented") else sample.get("key")  # augmented audio: never cached
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._frontend is None:
            self._frontend = build_frontend(self.audio_cfg).eval()
        with torch.no_grad():
            audio = torch.from_numpy(np.ascontiguousarray(sample["audio"], dtype=np.float32))[None]
            out = self._frontend(audio)[0].numpy()
        if key is not None and self.cache_size > 0:
            self._cache[key] = out
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out


def usable_reason(sample: dict, templates: dict[str, TemplateInfo], fps: float) -> str | None:
    """Why a decoded seq sample cannot train the motion model (None if it can)."""
    identity = sample["meta"].get("identity")
    if sample.get("verts") is None:
        return "no tracked meshes (verts.npy)"
    if identity not in templates:
        return f"no template for identity {identity!r}"
    if sample["verts"].shape[1] != templates[identity].num_vertices:
        return (f"verts have {sample['verts'].shape[1]} vertices, template of {identity} has "
                f"{templates[identity].num_vertices}")
    if abs(float(sample["meta"].get("fps", fps)) - fps) > 1e-3:
        return f"clip fps {sample['meta'].get('fps')} != model fps {fps} (infer.fps)"
    return None


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
        from emodifftalk.data.shards import collate_sequences, crop_sequence, stream_samples
        from emodifftalk.train.speech_augment import augment_sample

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        cfg = self.cfg
        stream = stream_samples(self.urls, shuffle_buffer=cfg.data.shuffle_buffer, resampled=True,
                                seed=self.seed * 1009 + self.rank, stats=self.stats, epoch=self.epoch)
        rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch])
        feats = _FeatureMaker(cfg.audio)
        buckets: dict[int, list[dict]] = {}
        for sample in stream:
            reason = usable_reason(sample, self.templates, cfg.infer.fps)
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
    from emodifftalk.data.shards import iter_dataset

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

    def __init__(self):
        from emodifftalk.data.shards import SkipStats

        self.stats = SkipStats()  # unreadable shards / corrupt samples
        self.unusable = SkipStats(max_logged=20)  # decodable but unusable (no meshes, no template, fps)
        self._templates: dict[str, TemplateInfo] | None = None
        self._root: str | None = None
        self._scale: float | None = None
        self._schedule: NoiseSchedule | None = None
        self._val: list[dict] | None = None
        self._media: tuple[np.ndarray, np.ndarray] | None = None

    # ---- set-up ------------------------------------------------------------------------------------

    def _data_root(self, cfg: Config) -> str:
        root = getattr(cfg.data, "root", "")
        if not root:
            raise ValueError("the motion task needs packed shards: set data.root=/path/to/shards")
        return root

    def templates(self, cfg: Config) -> dict[str, TemplateInfo]:
        root = self._data_root(cfg)
        if self._templates is None or self._root != root:
            self._templates, self._root, self._scale, self._val = load_template_infos(root), root, None, None
        return self._templates

    def schedule(self, cfg: Config) -> NoiseSchedule:
        if self._schedule is None or self._schedule.num_train_steps != cfg.diffusion.num_train_steps:
            self._schedule = NoiseSchedule.from_config(cfg.diffusion)
        return self._schedule

    def offset_scale(self, cfg: Config) -> float:
        if cfg.diffusion.offset_scale > 0:
            return float(cfg.diffusion.offset_scale)
        if self._scale is None:
            self._scale = estimate_offset_scale(self._data_root(cfg), self.templates(cfg))
            log.info("diffusion.offset_scale estimated from training data: %.6f m", self._scale)
        return self._scale

    def _ensure_offset_scale(self, model: nn.Module, cfg: Config) -> float:
        m = _unwrap(model)
        if float(m.offset_scale) <= 0:
            m.offset_scale.fill_(self.offset_scale(cfg))
        return float(m.offset_scale)

    # ---- Task protocol -------------------------------------------------------------------------------

    def build_model(self, cfg: Config) -> nn.Module:
        # offset_scale 0 = "not yet estimated"; set on the first loss/validate call (exports carry it)
        self._cfg = cfg
        return build_motion_model(cfg, offset_scale=cfg.diffusion.offset_scale)

    def train_batches(self, cfg: Config, rank: int, world_size: int, seed: int,
                      start_step: int) -> Iterator[dict]:
        from emodifftalk.data.shards import shard_urls

        self._cfg = cfg
        root = self._data_root(cfg)
        urls = shard_urls(root, "seq", "train")
        if not urls:
            raise ValueError(f"no train seq shards in {root}")
        templates = self.templates(cfg)
        self.offset_scale(cfg)  # estimate once, before any worker starts
        ds = MotionBatches(urls, templates, cfg, seed, rank, start_step, self.stats, self.unusable)
        if cfg.data.num_workers > 0:
            return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.data.num_workers))
        return iter(ds)

    def loss(self, model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        cfg = self._cfg
        d = cfg.diffusion
        scale = self._ensure_offset_scale(model, cfg)
        verts, template = batch["verts"], batch["template"]
        fmask = batch["frame_mask"]
        b = fmask.shape[0]
        x0 = (verts - template[:, None]) / scale * fmask[:, :, None, None].to(verts.dtype)
        aus = batch["aus"] * batch["au_mask"].to(batch["aus"].dtype)
        feats = batch.get("feats")
        if method_of(cfg) == "faceformer":
            return self._faceformer_loss(model, x0, batch, fmask, cfg)
        if d.regression:
            n = torch.zeros(b, dtype=torch.long, device=x0.device)
            # never dropped, but passed so the null embedding stays in the graph (DDP needs every
            # parameter to take part in each step unless find_unused_parameters is set)
            x_n, drop = torch.zeros_like(x0), torch.zeros(b, dtype=torch.bool, device=x0.device)
        else:
            n = torch.randint(0, d.num_train_steps, (b,), device=x0.device)
            x_n = self.schedule(cfg).q_sample(x0, n, torch.randn_like(x0))
            drop = torch.rand(b, device=x0.device) < d.cond_dropout
        drop_audio = torch.rand(b, device=x0.device) < d.audio_dropout
        pred = model(x_n, batch["template_unique"], aus, feats, n, drop_cond=drop, frame_mask=fmask,
                     template_index=batch["template_index"], drop_audio=drop_audio)
        terms = self._geometry(pred.float(), x0, batch, fmask, cfg)
        # eq. (22) on the real frames' predicted offsets in metres, (N, V, 3); logged unweighted
        terms["move"] = distance_loss((pred.float() * scale)[fmask.bool()], d.move_tau, weight=1.0)
        out = {"loss": terms.pop("geometry") + d.lambda_move * terms["move"]}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def _faceformer_loss(self, model: nn.Module, x0: Tensor, batch: dict, fmask: Tensor, cfg: Config) -> dict:
        """Eq. 17 on teacher-forced predictions; with probability ``faceformer.self_feed_prob`` the
        decoder is fed its own (no-grad) teacher-forced predictions instead of the true frames."""
        fed = x0
        if torch.rand(()) < cfg.faceformer.self_feed_prob:
            with torch.no_grad():
                fed = model(x0, batch["template"], batch["feats"], frame_mask=fmask).detach()
        pred = model(fed, batch["template"], batch["feats"], frame_mask=fmask)
        terms = self._geometry(pred.float(), x0, batch, fmask, cfg)
        out = {"loss": terms.pop("geometry")}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def _geometry(self, pred: Tensor, x0: Tensor, batch: dict, fmask: Tensor, cfg: Config) -> dict:
        """Eq. 17 in diffusion units; L_deform per topology group when a batch mixes templates."""
        templates = self.templates(cfg)
        infos = [templates[i] for i in batch["identity"]]
        same = len({i.topology for i in infos}) == 1
        terms = geometry_loss(pred, x0, lip_mask=batch["lip_mask"], edges=infos[0].laplacian if same else None,
                              weights=cfg.diffusion, frame_mask=fmask)
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

    def _val_clips(self, cfg: Config) -> list[dict]:
        """Up to VAL_CLIPS usable val clips (full length, features computed), cached."""
        from emodifftalk.data.shards import iter_dataset, shard_urls

        if self._val is not None:
            return self._val
        root = self._data_root(cfg)
        templates = self.templates(cfg)
        clips: list[dict] = []
        if shard_urls(root, "seq", "val"):
            feats = _FeatureMaker(cfg.audio)
            for s in iter_dataset(root, "seq", "val"):
                if usable_reason(s, templates, cfg.infer.fps) is None:
                    clips.append(dict(s, feats=feats(s)))
                if len(clips) >= VAL_CLIPS:
                    break
        if not clips:
            log.warning("no usable val clips in %s: motion validation is skipped", root)
        self._val = clips
        return clips

    @torch.no_grad()
    def validate(self, model: nn.Module, cfg: Config, step: int) -> dict[str, float]:
        from emodifftalk.eval.metrics import motion_metrics

        self._cfg = cfg
        clips = self._val_clips(cfg)
        if not clips:
            return {}
        scale = self._ensure_offset_scale(model, cfg)
        templates = self.templates(cfg)
        device = next(model.parameters()).device
        d = cfg.diffusion
        method = method_of(cfg)
        sched = self.schedule(cfg) if method == "diffusion" else None
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
        from emodifftalk.eval.metrics import mouth_opening

        self._media = (mouth_opening(gts[0], lips[0]), mouth_opening(preds[0], lips[0]))
        return out

    def log_media(self, model: nn.Module, writer, step: int) -> None:
        if self._media is None or writer is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        gt, pred = self._media
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.plot(gt * 1000, label="ground truth")
        ax.plot(pred * 1000, label="sampled")
        ax.set_xlabel("frame")
        ax.set_ylabel("mouth opening (mm)")
        ax.legend(loc="upper right")
        fig.tight_layout()
        writer.add_figure("motion/mouth_opening_val0", fig, step)
        plt.close(fig)

    def check_data(self, cfg: Config) -> None:
        from emodifftalk.train.data_check import check_training_shards

        check_training_shards(cfg, self.name, [("seq", "train"), ("template", None)])

    def skip_stats(self) -> dict[str, int]:
        return {"corrupt_samples": self.stats.n_skipped, "unusable_samples": self.unusable.n_skipped}

    def export_extra(self, model: nn.Module, out_dir: Path, cfg: Config) -> None:
        from emodifftalk.models.audio_frontend import encoder_id
        from emodifftalk.utils import atomic_write_text

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
