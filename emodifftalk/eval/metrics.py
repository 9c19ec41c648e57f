"""Evaluation metrics — the project's definitions, written down here once.

Motion metrics (numpy, float64; meshes in **metres**, world y-up):

* ``lve_sq``: per frame, max over lip vertices of the squared L2 error; mean over frames (m²).
* ``lve_mm``: per frame, max over lip vertices of the L2 distance; mean over frames; in mm.
* ``fdd``: per sequence, for each upper-face vertex the std over time of ‖v_t − template‖²;
  mean over vertices; GT minus prediction; mean over sequences (m²). ``fdd_abs`` = |fdd|.
  (``fdd_abs_per_sequence`` = mean over sequences of |GT − pred| is also provided: it cannot
  hide opposite errors of different sequences.)
* ``mod``: mouth opening = max − min of lip-vertex y per frame; mean |open_pred − open_gt| (mm).
* ``lve_mm_seq_std`` / ``_min`` / ``_max``: spread of the per-sequence ``lve_mm`` over sequences.

"Mean over frames" pools the frames of all sequences (CodeTalker/FaceDiffuser); "mean over
sequences" weights each sequence equally. Each motion metric accepts one sequence (T, V, 3),
a batch (B, T, V, 3) or a list of (T_i, V, 3) arrays (torch tensors are accepted too).

Image metrics (``psnr``, ``ssim``) are in ``losses/image.py``: the rig losses use them too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MM_PER_M = 1000.0
UP_AXIS = 1  # world y-up (data/schema.py)


# ---------------------------------------------------------------------------------- motion


def _seq_list(x, name: str) -> list[np.ndarray]:
    if isinstance(x, (list, tuple)):
        seqs = [np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64) for s in x]
    else:
        arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        if arr.ndim == 3:
            seqs = [arr]
        elif arr.ndim == 4:
            seqs = list(arr)
        else:
            raise ValueError(f"{name} must be (T, V, 3), (B, T, V, 3) or a list of (T, V, 3); got {arr.shape}")
    for s in seqs:
        if s.ndim != 3 or s.shape[-1] != 3:
            raise ValueError(f"{name}: every sequence must be (T, V, 3), got {s.shape}")
    return seqs


def _pairs(pred, gt) -> list[tuple[np.ndarray, np.ndarray]]:
    ps, gs = _seq_list(pred, "pred"), _seq_list(gt, "gt")
    if len(ps) != len(gs):
        raise ValueError(f"pred has {len(ps)} sequences but gt has {len(gs)}")
    for p, g in zip(ps, gs):
        if p.shape != g.shape:
            raise ValueError(f"pred sequence {p.shape} and gt sequence {g.shape} differ")
    return list(zip(ps, gs))


def _indices(idx, num_vertices: int, name: str) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{name} vertex set is empty")
    if idx.min() < 0 or idx.max() >= num_vertices:
        raise ValueError(f"{name} indices must be in [0, {num_vertices}), got [{idx.min()}, {idx.max()}]")
    return idx


def lip_max_error_per_frame(pred, gt, lip_idx, squared: bool = True) -> np.ndarray:
    """One (T, V, 3) pair → (T,) max over lip vertices of the squared (or plain) L2 error (metres)."""
    pairs = _pairs(pred, gt)
    if len(pairs) != 1:
        raise ValueError(f"lip_max_error_per_frame takes one sequence, got {len(pairs)}")
    p, g = pairs[0]
    idx = _indices(lip_idx, p.shape[1], "lip")
    sq = np.square(p[:, idx] - g[:, idx]).sum(-1)
    return sq.max(axis=1) if squared else np.sqrt(sq).max(axis=1)


def lve_sq(pred, gt, lip_idx) -> float:
    """Lip vertex error, CodeTalker/FaceDiffuser form: mean over frames of max_lip ‖Δ‖² (m²)."""
    per = [lip_max_error_per_frame(p, g, lip_idx, squared=True) for p, g in _pairs(pred, gt)]
    return float(np.concatenate(per).mean())


def lve_mm(pred, gt, lip_idx) -> float:
    """Lip vertex error as a distance: mean over frames of max_lip ‖Δ‖, in millimetres."""
    per = [lip_max_error_per_frame(p, g, lip_idx, squared=False) for p, g in _pairs(pred, gt)]
    return float(np.concatenate(per).mean() * MM_PER_M)


def upper_face_dynamics(verts, template, upper_idx) -> float:
    """One sequence (T, V, 3): mean over upper-face vertices of std_t ‖v_t − template‖² (m²)."""
    v = _seq_list(verts, "verts")[0]
    tpl = np.asarray(template, dtype=np.float64)
    if tpl.shape != v.shape[1:]:
        raise ValueError(f"template {tpl.shape} does not match sequence vertices {v.shape[1:]}")
    idx = _indices(upper_idx, v.shape[1], "upper_face")
    disp = np.square(v[:, idx] - tpl[idx]).sum(-1)  # (T, Vu)
    return float(disp.std(axis=0).mean())  # population std (ddof=0)


def _fdd_per_sequence(pred, gt, templates, upper_idx) -> np.ndarray:
    pairs = _pairs(pred, gt)
    tpls = templates if isinstance(templates, (list, tuple)) else [templates] * len(pairs)
    if len(tpls) != len(pairs):
        raise ValueError(f"got {len(tpls)} templates for {len(pairs)} sequences")
    return np.array([upper_face_dynamics(g, t, upper_idx) - upper_face_dynamics(p, t, upper_idx)
                     for (p, g), t in zip(pairs, tpls)])


def fdd(pred, gt, templates, upper_idx) -> float:
    """Upper-face dynamics deviation: mean over sequences of (FD(gt) − FD(pred)), m².

    ``templates``: one (V, 3) template for all sequences or a list, one per sequence.
    """
    return float(_fdd_per_sequence(pred, gt, templates, upper_idx).mean())


def fdd_abs(pred, gt, templates, upper_idx) -> float:
    """|fdd| (DESIGN.md)."""
    return abs(fdd(pred, gt, templates, upper_idx))


def fdd_abs_per_sequence(pred, gt, templates, upper_idx) -> float:
    """Mean over sequences of |FD(gt) − FD(pred)| (m²)."""
    return float(np.abs(_fdd_per_sequence(pred, gt, templates, upper_idx)).mean())


def mouth_opening(verts, lip_idx, up_axis: int = UP_AXIS) -> np.ndarray:
    """(T, V, 3) → (T,) max − min of the lip vertices' up coordinate (metres)."""
    v = _seq_list(verts, "verts")[0]
    y = v[:, _indices(lip_idx, v.shape[1], "lip"), up_axis]
    return y.max(axis=1) - y.min(axis=1)


def lip_gap(verts: np.ndarray, template: np.ndarray, lips) -> np.ndarray:
    """(T,) how far the lips are apart, in metres relative to the template: the distance between
    the centroids of the two halves of the lip vertices (split at the template's median lip height,
    world y up) minus the template's. The one lip-gap definition of the project (``eval speech``,
    lip closure, the synthetic world's AU25 labels); symmetric, so which half is "upper" does not
    matter. ``mouth_opening`` above is MOD's extent (max − min height), a different quantity."""
    lips = np.asarray(lips, np.int64)
    if len(lips) < 2:
        raise ValueError(f"a lip gap needs at least 2 lip vertices, got {len(lips)}")
    y0 = np.asarray(template)[lips, 1]
    upper, lower = lips[y0 > np.median(y0)], lips[y0 < np.median(y0)]
    if len(upper) == 0 or len(lower) == 0:
        raise ValueError("the template's lip vertex set has no upper/lower halves to measure a lip gap")
    rest = np.linalg.norm(template[upper].mean(0) - template[lower].mean(0))
    return np.linalg.norm(verts[:, upper].mean(1) - verts[:, lower].mean(1), axis=-1) - rest


def pearson(a, b, min_std: float = 1e-12) -> float | None:
    """Pearson r of two 1-D series; None when either is (near) constant or shorter than 3."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() < min_std or b.std() < min_std:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def lagged_pearson(a, b, lag: int) -> float | None:
    """:func:`pearson` of ``a[t]`` and ``b[t + lag]`` over the frames both cover (``lag`` > 0: ``b``
    follows ``a`` by that many frames)."""
    n = len(a)
    return pearson(a[: n - lag], b[lag:]) if lag >= 0 else pearson(a[-lag:], b[: n + lag])


def mod(pred, gt, lip_idx) -> float:
    """Mouth opening difference: mean over frames of |open_pred − open_gt|, in mm."""
    per = [np.abs(mouth_opening(p, lip_idx) - mouth_opening(g, lip_idx)) for p, g in _pairs(pred, gt)]
    return float(np.concatenate(per).mean() * MM_PER_M)


def motion_metrics(pred_seqs: Sequence, gt_seqs: Sequence, templates: Sequence,
                   lip_idx: Sequence, upper_idx: Sequence) -> dict[str, float]:
    """All motion metrics over a list of sequences with per-sequence vertex sets/templates.

    ``lip_idx``/``upper_idx``: lists (one index array per sequence) — sequences of different
    identities may have different topologies. Frame means pool frames; FDD averages sequences.
    """
    n = len(gt_seqs)
    if not (len(pred_seqs) == n == len(templates) == len(lip_idx) == len(upper_idx)):
        raise ValueError("pred_seqs, gt_seqs, templates, lip_idx and upper_idx must have the same length")
    if n == 0:
        raise ValueError("no sequences to evaluate")
    sq, dist, opening, fdds = [], [], [], []
    for p, g, t, li, ui in zip(pred_seqs, gt_seqs, templates, lip_idx, upper_idx):
        sq.append(lip_max_error_per_frame(p, g, li, squared=True))
        dist.append(lip_max_error_per_frame(p, g, li, squared=False))
        opening.append(np.abs(mouth_opening(p, li) - mouth_opening(g, li)))
        fdds.append(upper_face_dynamics(g, t, ui) - upper_face_dynamics(p, t, ui))
    fdd_val = float(np.mean(fdds))
    per_seq = np.array([d.mean() for d in dist]) * MM_PER_M  # spread over sequences: one clip can mislead
    return {
        "lve_sq": float(np.concatenate(sq).mean()),
        "lve_mm": float(np.concatenate(dist).mean() * MM_PER_M),
        "lve_mm_seq_std": float(per_seq.std()),
        "lve_mm_seq_min": float(per_seq.min()),
        "lve_mm_seq_max": float(per_seq.max()),
        "fdd": fdd_val,
        "fdd_abs": abs(fdd_val),
        "fdd_abs_per_sequence": float(np.abs(fdds).mean()),
        "mod": float(np.concatenate(opening).mean() * MM_PER_M),
        "n_sequences": n,
        "n_frames": int(sum(len(s) for s in sq)),
    }
