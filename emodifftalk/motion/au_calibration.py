"""Errors-in-variables correction of AU edits, from the AU labels' own statistics.

A least-squares map from noisy labels L = E + N to motion is shrunk: it estimates
Cov(Y, L) Σ_L⁻¹ where the structural map (what raising one AU by 1 does) is Cov(Y, L) Σ_E⁻¹ with
Σ_E = Σ_L − Σ_N. The world's AUs move in groups (emotions raise AU01/AU02/AU05 together, AU06 with
AU12), so the part of a label that varies on its own is mostly noise, and the shrinkage is strong:
in v2, edits of one code moved the face 0.1–0.5× as far as the data does. The correction
matrix A = Σ_L (Σ_L − Σ_N)⁻¹ turns a code change δ into the change A δ the fitted map must be
given (``Denoiser.edit_offsets``); the map times A is the structural map.

Σ_N is estimated from the labels alone: tracker noise is white from frame to frame while the
AUs are smooth, so with d_k the lag-k differences, var(d1) = 2σ² + s and var(d2) ≈ 2σ² + 4s
give σ² = (4 var(d1) − var(d2)) / 6 per AU. No ground truth is used. Eigenvalues of Σ_L − Σ_N
are floored at ``floor`` × the mean noise variance: directions the data hardly excites beyond
noise are not amplified without bound (and written as I + Σ_N (Σ_L − Σ_N)⁻¹, no edit is shrunk).
"""

from __future__ import annotations

import numpy as np

EIGEN_FLOOR = 1.0  # choice: measured on v2 (benchmarks/au_edit_ceiling.py), 0.1-1.0 all centre the gains


def _valid_rows(mask: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return mask[:, columns].all(axis=1)


def _labelled_frames(labels: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the AUs with any label, (N, 17) float64 frames where all of them are labelled)."""
    columns = np.concatenate(masks).any(axis=0)
    idx = np.flatnonzero(columns)
    rows = np.concatenate([lab[_valid_rows(m, columns)] for lab, m in zip(labels, masks)]).astype(np.float64)
    if len(rows) < len(idx) + 1:
        raise ValueError(f"need more than {len(idx)} valid label frames, got {len(rows)}")
    return idx, rows


def label_noise_variance(labels: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """(17,) per-AU frame-to-frame noise variance of label sequences [(T, 17)] with masks [(T, 17)]."""
    columns = np.concatenate(masks).any(axis=0)
    d1, d2 = [], []
    for lab, mask in zip(labels, masks):
        ok = _valid_rows(mask, columns)
        d1.append((lab[1:] - lab[:-1])[ok[1:] & ok[:-1]])
        d2.append((lab[2:] - lab[:-2])[ok[2:] & ok[:-2]])
    d1, d2 = np.concatenate(d1).astype(np.float64), np.concatenate(d2).astype(np.float64)
    if len(d1) < 2 or len(d2) < 2:
        raise ValueError("need label sequences with at least 3 consecutive valid frames")
    return np.clip((4.0 * d1.var(axis=0) - d2.var(axis=0)) / 6.0, 0.0, None) * columns


def deattenuation_matrix(labels: list[np.ndarray], masks: list[np.ndarray],
                         floor: float = EIGEN_FLOOR) -> np.ndarray:
    """(17, 17) A = Σ_L (Σ_L − Σ_N)⁻¹ = I + Σ_N (Σ_L − Σ_N)⁻¹ over the labelled AUs (identity rows/columns for AUs without
    labels, e.g. AU24 in OpenFace 2.x); see the module docstring."""
    n = labels[0].shape[1]
    idx, rows = _labelled_frames(labels, masks)
    noise = label_noise_variance(labels, masks)
    sigma_l = np.cov(rows[:, idx].T)
    w, v = np.linalg.eigh(sigma_l - np.diag(noise[idx]))
    w = np.maximum(w, floor * max(float(noise[idx].mean()), 1e-12))
    out = np.eye(n)
    # A = I + Σ_N (Σ_L − Σ_N)⁻¹ with the floored inverse: an edit is never shrunk
    out[np.ix_(idx, idx)] += np.diag(noise[idx]) @ (v / w) @ v.T
    return out.astype(np.float32)


def whitening(labels: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(μ (17,), W (17, 17)): mean and symmetric inverse square root Σ_L^-½ of the labelled AUs'
    codes (identity rows/columns and zero mean for AUs without labels)."""
    n = labels[0].shape[1]
    idx, rows = _labelled_frames(labels, masks)
    mean = np.zeros(n)
    mean[idx] = rows[:, idx].mean(axis=0)
    w, v = np.linalg.eigh(np.cov(rows[:, idx].T))
    out = np.eye(n)
    out[np.ix_(idx, idx)] = (v / np.sqrt(np.maximum(w, 1e-6 * w.max()))) @ v.T
    return mean.astype(np.float32), out.astype(np.float32)
