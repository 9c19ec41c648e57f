"""The per-identity feature-line fit learns an AU-driven opacity change from rendered frames."""

import pytest
import torch
from test_rig_gaussians import make_rig

from emodifftalk import au
from emodifftalk.config import build_config
from emodifftalk.render import rasterize
from emodifftalk.rig.deform import deform
from emodifftalk.rig.feature_line_fit import (MovingFrame, fit_feature_line, load_feature_line,
                                              save_feature_line)
from emodifftalk.render.cameras import look_at

SIZE = 32


def _cameras():
    vms, ks = [], []
    for x in (-0.15, 0.0, 0.15):
        vms.append(look_at((x, 0.0, 0.5), (0.0, 0.0, 0.0)))
        ks.append(torch.tensor([[60.0, 0, SIZE / 2], [0, 60.0, SIZE / 2], [0, 0, 1]]))
    return torch.stack(vms), torch.stack(ks)


def _frames(rig, n=4):
    """Captured frames where AU06 makes the facial Gaussians more transparent (Δα = −0.4 · AU06)."""
    vms, ks = _cameras()
    k06 = au.AU_INDEX["AU06"]
    out = []
    for i in range(n):
        aus = torch.zeros(au.NUM_AUS)
        aus[k06] = i / (n - 1)
        delta = torch.full((rig.n_facial,), -0.4 * float(aus[k06]))
        g = deform(rig, rig.canonical_verts, delta)
        img = rasterize(**g.render_args(), viewmats=vms, Ks=ks, width=SIZE, height=SIZE,
                        background=torch.ones(3)).rgb
        out.append(MovingFrame(f"id0__c__f{i:05d}", img, vms, ks, rig.canonical_verts.clone(), aus))
    return out


def test_fit_learns_opacity_change_and_round_trips(tmp_path):
    torch.manual_seed(0)
    rig = make_rig(n_free=10)
    rig.opacity_logits = torch.full_like(rig.opacity_logits, 2.0)  # opaque enough for Δα to show
    cfg = build_config("tiny", ["feature_line.steps=60", "feature_line.lr=0.05", "rig.holdout_camera=1",
                                "render.tile_size=8"])
    model, metrics = fit_feature_line(rig, _frames(rig), cfg, seed=0)
    assert metrics["holdout_psnr_with_feature_line"] > metrics["holdout_psnr_without_feature_line"] + 3.0
    e = torch.zeros(1, au.NUM_AUS)
    e[0, au.AU_INDEX["AU06"]] = 1.0
    with torch.no_grad():
        assert model(e).mean() < -0.1  # learned: AU06 lowers facial opacity
        assert torch.allclose(model(torch.zeros(1, au.NUM_AUS)), torch.zeros(1, rig.n_facial))  # neutral = α0
    save_feature_line(model, tmp_path, metrics, cfg)
    again = load_feature_line(tmp_path, rig)
    with torch.no_grad():
        assert torch.allclose(again(e), model(e))


def test_load_refuses_a_feature_line_of_another_rig(tmp_path):
    rig = make_rig(n_free=10)
    cfg = build_config("tiny", ["feature_line.steps=1"])
    model, metrics = fit_feature_line(rig, _frames(rig, n=2), cfg)
    save_feature_line(model, tmp_path, metrics, cfg)
    other = make_rig(n_free=10)
    other.facial_idx = other.facial_idx[:-1]
    try:
        load_feature_line(tmp_path, other)
    except ValueError as e:
        assert "facial Gaussians" in str(e)
    else:
        raise AssertionError("a feature line with another Q must be refused")
    assert load_feature_line(tmp_path / "nothing") is None


# ---- each regulariser changes the trained result when its weight changes ------------------------

LIFT = 0.004  # metres the facial Gaussians move towards the cameras at AU06 = 1


def _moving_frames(rig, n=4):
    """Like ``_frames`` but the face also moves (Δμ = LIFT · AU06 along +z) and every frame knows
    the AU codes of the video frame after it (AU06 + 0.1, AU12 flickering), as from a clip."""
    vms, ks = _cameras()
    k06, k12 = au.AU_INDEX["AU06"], au.AU_INDEX["AU12"]
    out = []
    for i in range(n):
        aus = torch.zeros(au.NUM_AUS)
        aus[k06], aus[k12] = i / (n - 1), 0.5 * (i % 2)
        nxt = aus.clone()
        nxt[k06], nxt[k12] = min(1.0, aus[k06] + 0.1), 0.5 - aus[k12]
        verts = rig.canonical_verts.clone()
        verts[rig.facial_idx, 2] += LIFT * float(aus[k06])
        delta = torch.full((rig.n_facial,), -0.4 * float(aus[k06]))
        g = deform(rig, verts, delta)
        img = rasterize(**g.render_args(), viewmats=vms, Ks=ks, width=SIZE, height=SIZE,
                        background=torch.ones(3)).rgb
        out.append(MovingFrame(f"id0__c__f{i:05d}", img, vms, ks, verts, aus, aus_next=nxt))
    return out


def _fit(rig, frames, *overrides):
    cfg = build_config("tiny", ["feature_line.steps=30", "feature_line.lr=0.05", "rig.holdout_camera=1",
                                "render.tile_size=8", "feature_line.lambda_sparse=0", "feature_line.lambda_smooth=0",
                                "feature_line.lambda_opcmotion=0", *overrides])
    return fit_feature_line(rig, frames, cfg, seed=0)[0], cfg


def _sparsity(model, frames, cfg, rig):
    return float(model.F.abs().mean())


def _roughness(model, frames, cfg, rig):
    """Mean ‖f_t − f_{t+1}‖² over the frames' consecutive pairs (what eq. 19's smoothness sums)."""
    now = model.features(torch.stack([fr.aus for fr in frames]))
    nxt = model.features(torch.stack([fr.aus_next for fr in frames]))
    return float((now - nxt).square().sum(-1).mean())


def _decoupling(model, frames, cfg, rig):
    """Mean (‖Δμ‖/γ − |Δα|)²: how far the learned opacity change is from the motion's (eq. 21)."""
    mu = torch.stack([(fr.verts - rig.canonical_verts)[rig.facial_idx] for fr in frames])
    alpha = model(torch.stack([fr.aus for fr in frames]))
    return float((mu.norm(dim=-1) / cfg.feature_line.gamma - alpha.abs()).square().mean())


# MEASURED (seeds 0-3 of rig and fit, weight 0 -> 1): mean |F| x0.40-0.53, roughness x0.01-0.07,
# decoupling x0.03-0.46; at the default weights (0.01, 0.001, 0.1) x0.85-0.98, x0.50-0.71, x0.07-0.84
@pytest.mark.parametrize("knob, measure, floor", [
    ("lambda_sparse", _sparsity, 0.7),  # eq. (19) L1 on F
    ("lambda_smooth", _roughness, 0.2),  # eq. (19) smoothness over consecutive frames
    ("lambda_opcmotion", _decoupling, 0.7),  # eq. (21) motion-opacity coupling
])
def test_each_regulariser_changes_the_fit(knob, measure, floor):
    torch.manual_seed(0)
    rig = make_rig(n_free=10)
    rig.opacity_logits = torch.full_like(rig.opacity_logits, 2.0)
    frames = _moving_frames(rig)
    off, cfg = _fit(rig, frames)
    on, _ = _fit(rig, frames, f"feature_line.{knob}=1.0")
    with torch.no_grad():
        before, after = measure(off, frames, cfg, rig), measure(on, frames, cfg, rig)
    assert after < floor * before, f"{knob}=1: {measure.__name__} {before:.4g} -> {after:.4g}"


def test_moving_frames_pair_each_frame_with_the_next_video_frame():
    import numpy as np

    from emodifftalk.rig.feature_line_fit import moving_frames

    t_frames = 6
    aus = np.linspace(0, 1, t_frames * au.NUM_AUS, dtype=np.float32).reshape(t_frames, au.NUM_AUS)
    mask = np.ones_like(aus, bool)
    mask[:, au.AU_INDEX["AU24"]] = False
    cam = {"name": "c0", "viewmat": np.eye(4), "K": np.eye(3)}

    def sample(frame):
        return {"key": f"id0__c0__f{frame:05d}", "meta": {"clip": "c0", "frame": frame}, "cameras": [cam],
                "images": {"c0": np.zeros((4, 4, 3), np.uint8)}, "verts": np.zeros((3, 3), np.float32)}

    out = moving_frames([sample(0), sample(5)], {"c0": {"aus": aus, "au_mask": mask}})
    expect = np.where(mask, aus, 0)
    assert torch.equal(out[0].aus_next, torch.from_numpy(expect[1]))  # frame 0 pairs with frame 1
    assert torch.equal(out[1].aus_next, torch.from_numpy(expect[4]))  # the last frame with the one before
    assert float(out[0].aus_next[au.AU_INDEX["AU24"]]) == 0.0  # invalid labels zeroed like E_t
