"""Errors-in-variables correction of AU edits from label statistics alone."""

import numpy as np
import pytest

from emodifftalk.motion.au_calibration import deattenuation_matrix, label_noise_variance


def _world(n_clips=40, t=125, noise=(0.10, 0.10, 0.03), seed=0):
    """Smooth, grouped activations E (AU0 and AU1 move together), labels L = E + white noise, a
    third column never labelled; Y = E @ M, the structural map M."""
    rng = np.random.default_rng(seed)
    kernel = np.hanning(31) / np.hanning(31).sum()
    truths, labels, masks = [], [], []
    for _ in range(n_clips):
        z = np.stack([np.convolve(rng.normal(size=t + 30), kernel, "valid") for _ in range(3)], 1) * 1.5
        e = np.stack([z[:, 0], 0.95 * z[:, 0] + 0.15 * z[:, 1], z[:, 2], np.zeros(t)], 1)
        lab = e + rng.normal(size=e.shape) * np.array([*noise, 0.0])
        lab[:, 3] = 0.0
        mask = np.ones_like(lab, bool)
        mask[:, 3] = False
        truths.append(e), labels.append(lab), masks.append(mask)
    return truths, labels, masks


def test_noise_variance_is_recovered_from_the_labels_alone():
    _, labels, masks = _world()
    est = np.sqrt(label_noise_variance(labels, masks))
    assert est[:3] == pytest.approx([0.10, 0.10, 0.03], rel=0.15)
    assert est[3] == 0.0  # no labels: no noise estimate


def test_deattenuated_least_squares_recovers_the_structural_map():
    truths, labels, masks = _world()
    m = np.random.default_rng(1).normal(size=(4, 6))
    m[3] = 0.0
    x = np.concatenate(labels)[:, :3]
    y = np.concatenate(truths) @ m
    fitted = np.linalg.lstsq(np.c_[np.ones(len(x)), x], y, rcond=None)[0][1:]  # shrunk by the noise

    def gain(w, k):
        return float(w[k] @ m[k] / (m[k] @ m[k]))

    assert gain(fitted, 0) < 0.7 and gain(fitted, 1) < 0.7  # the grouped AUs' own parts: mostly noise
    unfloored = deattenuation_matrix(labels, masks, floor=0.05)[:3, :3].T @ fitted
    for k in range(3):
        assert gain(unfloored, k) == pytest.approx(1.0, abs=0.15), k
    a = deattenuation_matrix(labels, masks)  # the default floor: part of the way, never shrinking
    floored = a[:3, :3].T @ fitted
    assert gain(fitted, 0) + 0.05 < gain(floored, 0) < gain(unfloored, 0)
    assert np.array_equal(a[3], np.eye(4)[3]) and np.array_equal(a[:, 3], np.eye(4)[:, 3])


def test_clean_labels_need_no_correction():
    _, labels, masks = _world(noise=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(deattenuation_matrix(labels, masks), np.eye(4), atol=0.05)


def test_whitening_decorrelates_the_labelled_codes():
    from emodifftalk.motion.au_calibration import whitening

    _, labels, masks = _world()
    mean, w = whitening(labels, masks)
    x = np.concatenate(labels)
    z = (x - mean) @ w.T
    np.testing.assert_allclose(np.cov(z[:, :3].T), np.eye(3), atol=1e-6)
    assert np.array_equal(w[3], np.eye(4)[3]) and mean[3] == 0.0  # AU without labels untouched
