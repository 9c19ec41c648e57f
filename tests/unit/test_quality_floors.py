"""Quality floors: each model, trained for seconds on seeded tiny data, must beat a baseline.

These catch a model that got worse while still producing well-shaped output (a flipped loss sign,
an ignored condition, unbaked colours). Each floor was set from measured runs over seeds 0-3 with
the same code (see ``MEASURED`` next to each threshold) and leaves headroom to the worst seed;
the tests themselves run seed 0. Re-measure (about 2 minutes on one core):

    PYTHONPATH=. OMP_NUM_THREADS=1 python tests/unit/test_quality_floors.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusion_fixtures import make_motion_shards, tiny_motion_config, upper_half
from s2au_data import write_tiny_shards

from emodifftalk.au import AU_INDEX
from emodifftalk.config import build_config
from emodifftalk.train.loop import run_training
from emodifftalk.train.task import get_task

# ----------------------------------------------------------------------------- Speech-to-AU


# The train-time speech augmentation (microphones, added silence labelled lips-closed) is built for
# speech; on 1.2 s tone-burst clips it costs the 200-step model its MAE edge (measured seeds 0-3:
# MAE 0.027-0.052 vs train-mean 0.051, r 0.77-0.86). The MAE floor measures the learning machinery
# without it; a second test keeps the defaults honest on correlation.
NO_SPEECH_AUGMENT = ["audio.train_augment_prob=0", "audio.train_silence_prob=0", "audio.train_closed_below_db=null",
                     "audio.train_loudness_prob=0", "audio.train_vtlp_prob=0"]


def train_and_eval_s2au(tmp, seed: int = 0, overrides: tuple[str, ...] = tuple(NO_SPEECH_AUGMENT)) -> dict:
    """200 steps on the tone-burst data of ``s2au_data`` (AU25/26 follow two audio bands) → eval report."""
    from emodifftalk.eval.s2au import run_eval

    shards = write_tiny_shards(tmp / "shards", clips_per_identity=1, seconds=1.2)
    cfg = build_config("tiny", [*overrides, f"data.root={shards}", "audio.n_mels=16", "s2au.d_model=16", "s2au.n_heads=2",
                                "s2au.local_layers=1", "s2au.global_layers=1", "s2au.calib_dim=8",
                                "data.batch_size=3", "data.window_frames=20", "data.shuffle_buffer=4",
                                "train.max_steps=200", "train.lr=5e-3", "train.warmup_steps=1",
                                "train.val_every=0", "train.log_every=1000", "train.ckpt_every=100000",
                                f"train.seed={seed}"])
    export = run_training(get_task("s2au", cfg), tmp / "run")
    return run_eval(export, shards)


def test_speech_to_au_beats_the_train_mean(tmp_path):
    overall = train_and_eval_s2au(tmp_path)["results"]["overall"]
    ours, mean = overall["s2au"]["mean"]["mae"], overall["train_mean"]["mean"]["mae"]
    # MEASURED (train seeds 0-3): MAE 0.018-0.028 vs train-mean 0.051 (ratio <= 0.54); floor 0.75
    assert ours < 0.75 * mean, f"Speech-to-AU MAE {ours:.4f} does not beat train-mean {mean:.4f} by 25 %"
    # MEASURED: mean Pearson r over the labelled AUs 0.79-0.96 (train-mean has none); floor 0.6
    assert overall["s2au"]["mean"]["pearson"] > 0.6


def test_speech_to_au_with_default_augmentation_still_follows_the_audio(tmp_path):
    # the loudness contour scales AU25/26 by the v2 world's jaw-with-loudness rule; these tone
    # bursts' labels follow another (linear amplitude), so it is off here (MEASURED seed 0: r 0.59
    # with it); test_speech_augment.py checks its labels
    overall = train_and_eval_s2au(tmp_path, overrides=("audio.train_loudness_prob=0",))["results"]["overall"]
    # MEASURED (train seeds 0-3, default audio.train_* augmentation): mean r 0.77-0.86; floor 0.6
    assert overall["s2au"]["mean"]["pearson"] > 0.6


# ----------------------------------------------------------------------------- motion


@pytest.fixture(scope="module")
def motion_export(tmp_path_factory):
    """Diffusion model trained 300 steps on AU-driven meshes whose fields all identities share."""
    tmp = tmp_path_factory.mktemp("motion_floor")
    shards = make_motion_shards(tmp, regional=True, n_clips=8, n_frames=50)
    return train_motion(shards, tmp / "run"), shards, tmp / "raw"


def train_motion(shards, out, seed: int = 0):
    cfg = tiny_motion_config(shards, "train.max_steps=300", "train.val_every=0", "train.ckpt_every=100000",
                             "train.log_every=1000", f"train.seed={seed}")
    return run_training(get_task("motion", cfg), out)


def test_motion_model_beats_the_template_lve(motion_export):
    from emodifftalk.eval.motion import run_eval

    export, shards, _ = motion_export
    report = run_eval(export, shards, split="test", methods=["ddim-10", "template"])
    ours, template = report["results"]["ddim-10"]["lve_mm"], report["results"]["template"]["lve_mm"]
    # MEASURED (train seeds 0-3, test identity, 8 clips): LVE 2.58-2.84 mm vs template-only 10.58 mm;
    # floor 0.5 x template
    assert ours < 0.5 * template, f"motion LVE {ours:.2f} mm does not beat template-only {template:.2f} mm"


def edit_region_motion(export, shards, raw, name: str) -> tuple[float, float, dict]:
    """RMS offset change (mm) in the upper / lower half of the test face when AU ``name`` is raised by
    0.5, and the response stats against the true field."""
    from emodifftalk.diffusion import NoiseSchedule
    from emodifftalk.eval.au_response import au_edit_response
    from emodifftalk.eval.motion import load_eval_clips
    from emodifftalk.diffusion.windowed import sample_motion
    from emodifftalk.train.export import load_exported

    model, cfg = load_exported(export, task="motion")
    clips, info = load_eval_clips(shards, "test", cfg, max_clips=1)
    clip = clips[0]
    ident = clip["meta"]["identity"]
    tpl = info["templates"][ident].verts
    fields = np.load(raw / ident / "au_fields.npy")
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    aus = (clip["aus"] * clip["au_mask"]).astype(np.float32)
    edited = aus.copy()
    k = AU_INDEX[name]
    edited[:, k] = np.clip(edited[:, k] + 0.5, 0, 1)

    def sample(codes):
        g = torch.Generator().manual_seed(0)
        return sample_motion(model, schedule, torch.from_numpy(tpl), torch.from_numpy(codes),
                             torch.from_numpy(clip["feats"]), cfg, generator=g).numpy()

    delta = sample(edited) - sample(aus)  # (T, V, 3)
    up = upper_half(tpl)
    rms = np.sqrt(np.square(delta).sum(-1).mean(0)) * 1000.0  # (V,) mm
    stats = au_edit_response(model, schedule, tpl, aus, clip["feats"], fields, cfg, [name])[name]
    return float(rms[up].mean()), float(rms[~up].mean()), stats


@pytest.mark.parametrize("name, region", [("AU01", "upper"), ("AU26", "lower")])
def test_an_au_edit_moves_its_region_more_than_the_rest(motion_export, name, region):
    upper, lower, stats = edit_region_motion(*motion_export, name)
    inside, outside = (upper, lower) if region == "upper" else (lower, upper)
    # MEASURED (train seeds 0-3), RMS mm inside vs outside: AU01 1.34-1.43 vs 0.33-0.57 (x2.4-4.2),
    # AU26 0.65-0.74 vs 0.07-0.19 (x3.9-9.3); floor x1.8
    assert inside > 1.8 * outside, f"{name}: moved {inside:.3f} mm in its region vs {outside:.3f} mm outside"
    # MEASURED: gain 0.88-0.95, cosine 0.81-0.95 against the true field; floor 0.5 each
    assert stats["gain"] > 0.5 and stats["cosine"] > 0.5, stats


# ----------------------------------------------------------------------------- rig


def test_rig_held_out_psnr_is_well_above_flat_colours(tmp_path):
    """The saved rig, re-rendered at the held-out camera, beats the same Gaussians with every colour
    set to their mean (right geometry, no appearance) by a wide margin."""
    psnr_rig, psnr_flat, reported = rig_holdout_psnr(tmp_path, seed=0)
    # MEASURED (toy + train seeds 0-3): 23.5-27.4 dB vs flat colours 17.8-18.6 dB (+5.3 to +9.1 dB);
    # floors: 4 dB above flat, 20 dB absolute
    assert psnr_rig > psnr_flat + 4.0 and psnr_rig > 20.0, (psnr_rig, psnr_flat)
    assert psnr_rig == pytest.approx(reported, abs=0.5)  # the saved rig is the one the metric describes


def rig_holdout_psnr(tmp, seed: int = 0) -> tuple[float, float, float]:
    from emodifftalk.losses.image import psnr
    from emodifftalk.render import rasterize
    from emodifftalk.rig.deform import deform
    from emodifftalk.rig.gaussians import GaussianRig
    from emodifftalk.rig.reconstruct import reconstruct_identity
    from emodifftalk.rig.toy import make_toy_identity

    with torch.no_grad():
        samples, template = make_toy_identity("toy", n_lat=8, n_lon=12, n_hair=60, n_cameras=4, image_size=32,
                                              seed=seed)
    cfg = build_config("tiny", ["rig.n_free_points=60", "rig.densify_every=10", "rig.triplane_resolution=16",
                                "rig.steps=60", "render.backend=torch", f"train.seed={seed}"])
    res = reconstruct_identity(samples, template, cfg, tmp / "rig", progress=False)
    rig = GaussianRig.load(res.rig_dir)
    s = samples[0]
    h = cfg.rig.holdout_camera % len(s["cameras"])
    cam = s["cameras"][h]
    target = torch.from_numpy(s["images"][cam["name"]]).float()[None] / 255.0
    vm = torch.as_tensor(np.asarray(cam["viewmat"]), dtype=torch.float32)[None]
    K = torch.as_tensor(np.asarray(cam["K"]), dtype=torch.float32)[None]

    def render(colors):
        g = deform(rig, rig.canonical_verts)
        args = g.render_args()
        args["colors"] = colors
        out = rasterize(**args, viewmats=vm, Ks=K, width=target.shape[2], height=target.shape[1],
                        background=torch.tensor(cfg.render.background))
        return out.rgb.clamp(0, 1)

    with torch.no_grad():
        ours = float(psnr(render(rig.colors), target).mean())
        flat = float(psnr(render(rig.colors.mean(0, keepdim=True).expand_as(rig.colors)), target).mean())
    return ours, flat, res.metrics["psnr_holdout"]


def _measure(seeds=range(4)) -> None:
    """Print every floored quantity for ``seeds`` (the numbers the MEASURED comments quote)."""
    import tempfile
    from pathlib import Path

    from emodifftalk.eval.motion import run_eval

    torch.set_num_threads(1)
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            o = train_and_eval_s2au(d / "s2au", seed)["results"]["overall"]
            print(f"seed {seed} s2au: MAE {o['s2au']['mean']['mae']:.4f} vs train-mean "
                  f"{o['train_mean']['mean']['mae']:.4f}, r {o['s2au']['mean']['pearson']:.3f}", flush=True)
            ours, flat, _ = rig_holdout_psnr(d / "rig", seed)
            print(f"seed {seed} rig: held-out PSNR {ours:.2f} dB vs flat colours {flat:.2f} dB", flush=True)
            shards = make_motion_shards(d / "motion", regional=True, n_clips=8, n_frames=50)
            export = train_motion(shards, d / "motion" / "run", seed)
            r = run_eval(export, shards, split="test", methods=["ddim-10", "template"])["results"]
            print(f"seed {seed} motion: LVE {r['ddim-10']['lve_mm']:.2f} mm vs template {r['template']['lve_mm']:.2f} mm",
                  flush=True)
            for name in ("AU01", "AU26"):
                up, low, st = edit_region_motion(export, shards, d / "motion" / "raw", name)
                print(f"seed {seed} edit {name}: upper {up:.2f} mm, lower {low:.2f} mm, gain {st['gain']:.2f}, "
                      f"cosine {st['cosine']:.2f}", flush=True)


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)
    _measure()
