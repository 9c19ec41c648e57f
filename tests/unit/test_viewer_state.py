"""Viewer state, edit application, motion re-sampling and the worker, without a browser (fast)."""

import json
import threading

import numpy as np
import pytest
import torch

from emodifftalk import au
from emodifftalk.config import build_config
from emodifftalk.edits import apply_edits, load_edits, parse_edits
from emodifftalk.diffusion.windowed import resample_spans
from emodifftalk.viewer.edit_worker import EditWorker
from emodifftalk.viewer.state import Clip, ViewerState, frame_spans, track_to_curves

FPS = 25.0
K12, K04, K26 = au.AU_INDEX["AU12"], au.AU_INDEX["AU04"], au.AU_INDEX["AU26"]




def make_clip(t=40, v=12, seed=0) -> Clip:
    rng = np.random.default_rng(seed)
    aus = rng.uniform(0.1, 0.6, (t, au.NUM_AUS)).astype(np.float32)
    return Clip(aus, rng.normal(0, 0.002, (t, v, 3)).astype(np.float32), FPS)


def test_frame_spans_and_merge():
    m = np.zeros(20, bool)
    m[[2, 3, 4, 9, 10, 19]] = True
    assert frame_spans(m) == [(2, 5), (9, 11), (19, 20)]
    assert frame_spans(m, merge_gap=4) == [(2, 11), (19, 20)]
    assert frame_spans(np.zeros(5, bool)) == []


def test_track_to_curves_round_trips_through_json_exactly():
    rng = np.random.default_rng(1)
    t = 60
    track = np.zeros((t, au.NUM_AUS))
    track[5:20, K12] = 0.35
    track[20:23, K12] = [0.2, 0.1, 0.05]  # a ramp
    track[40:41, K04] = -0.4  # a single frame
    track[:, K26] = 0.1  # the whole clip
    curves = track_to_curves(track, FPS)
    assert {c.au_name for c in curves} == {"AU12", "AU04", "AU26"}
    from emodifftalk.edits import edits_to_dict

    back = parse_edits(json.loads(json.dumps(edits_to_dict(curves))))
    base = rng.uniform(0.2, 0.7, (t, au.NUM_AUS)).astype(np.float32)
    got = apply_edits(base, back, FPS, lip_lock=False)
    want = np.clip(base.astype(np.float64) + track, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_whole_clip_offset_and_dirty_frames():
    clip = make_clip()
    st = ViewerState(clip)
    assert st.is_clean() and st.edit_request() is None
    assert st.set_offset("AU04", 0.25) and not st.set_offset("AU04", 0.25)  # unchanged value: no new version
    target = st.target_aus()
    np.testing.assert_allclose(target[:, K04], np.clip(clip.aus[:, K04] + 0.25, 0, 1), atol=1e-6)
    others = [k for k in range(au.NUM_AUS) if k != K04]
    np.testing.assert_array_equal(target[:, others], clip.aus[:, others])
    assert st.dirty_mask().all()
    req = st.edit_request()
    assert req.spans == [(0, clip.n_frames)] and req.version == st.version


def test_range_edit_with_ramp_and_sliders_per_range():
    clip = make_clip(t=50)
    st = ViewerState(clip, ramp_seconds=2 / FPS)  # 2 ramp frames
    st.set_range(10, 19)
    st.set_offset("AU12", 0.3)
    assert st.slider_values()[K12] == pytest.approx(0.3)
    track = st.offset_track()[:, K12]
    np.testing.assert_allclose(track[10:20], 0.3)
    np.testing.assert_allclose(track[[8, 9, 20, 21]], [0.1, 0.2, 0.2, 0.1])  # linear ramps outside the range
    assert np.all(track[:8] == 0) and np.all(track[22:] == 0)
    dirty = st.dirty_mask()
    np.testing.assert_array_equal(np.flatnonzero(dirty), np.arange(8, 22))
    st.set_range(30, 40)  # another range: fresh sliders; the first edit stays
    assert np.all(st.slider_values() == 0)
    st.set_offset("AU12", -0.2)
    st.set_range(19, 10)  # reversed bounds are accepted
    assert st.range == (10, 19) and st.slider_values()[K12] == pytest.approx(0.3)
    st.set_range_seconds(30 / FPS, 40 / FPS)
    assert st.slider_values()[K12] == pytest.approx(-0.2)
    st.set_offsets(np.zeros(au.NUM_AUS))  # reset this range only
    assert np.all(st.offset_track()[28:, K12] == 0) and st.offset_track()[15, K12] == pytest.approx(0.3)
    assert st.clear_edits() and np.all(st.offset_track() == 0) and not st.clear_edits()


def test_lip_lock_keeps_speech_aus():
    clip = make_clip()
    st = ViewerState(clip)  # lip lock on by default
    st.set_offset("AU26", -0.5)
    np.testing.assert_array_equal(st.target_aus(), clip.aus)  # cannot push jaw drop below speech
    assert st.is_clean()
    v = st.version
    assert st.set_lip_lock(False) and st.version == v + 1
    np.testing.assert_allclose(st.target_aus()[:, K26], np.clip(clip.aus[:, K26] - 0.5, 0, 1), atol=1e-6)
    st.set_offset("AU26", 0.3)
    st.set_lip_lock(True)  # raising a speech AU is allowed under lip lock
    np.testing.assert_allclose(st.target_aus()[:, K26], np.clip(clip.aus[:, K26] + 0.3, 0, 1), atol=1e-6)


def test_exported_edits_reproduce_the_viewer_aus(tmp_path):
    clip = make_clip(t=45)
    st = ViewerState(clip)
    st.set_offset("AU04", 0.2)
    st.set_range(5, 15)
    st.set_offset("AU12", 0.4)
    st.set_offset("AU04", -0.1)
    st.set_range(12, 30)
    st.set_offset("AU12", 0.3)  # overlaps the previous range: offsets add up
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(st.edits_dict()))
    # what `animate --edits` does: apply_edits with the config's lip lock on the (unedited) AU codes
    got = apply_edits(clip.aus, load_edits(path), FPS, lip_lock=True)
    np.testing.assert_array_equal(got, st.target_aus())
    assert got[13, K12] == pytest.approx(min(1.0, clip.aus[13, K12] + 0.7), abs=1e-6)


def test_text_modulation_changes_the_base():
    clip = make_clip()
    st = ViewerState(clip, text_params={"alpha": 1.0, "beta": 0.5, "target": 0.6})
    probs = np.zeros(au.NUM_AUS)
    probs[K12] = 1.0
    st.set_text("a smile", probs)
    base = st.base_aus()
    assert np.all(base[:, K12] >= 0.6 - 1e-6)  # requested AU lifted to at least the target level
    assert not np.allclose(base, clip.aus) and st.dirty_mask().any()
    st.set_text("", None)
    np.testing.assert_array_equal(st.base_aus(), clip.aus)
    with pytest.raises(ValueError, match="17"):
        st.set_text("bad", np.zeros(3))


def test_commit_and_fail_keep_a_consistent_good_clip():
    clip = make_clip()
    st = ViewerState(clip)
    st.set_offset("AU01", 0.2)
    req = st.edit_request()
    st.fail(req, "boom")
    assert st.status.error == "boom" and st.good is clip
    assert st.edit_request() is None  # the failed version is not retried by itself
    st.set_offset("AU01", 0.3)
    req = st.edit_request()
    assert req is not None and st.status.error is None
    new = Clip(req.target, req.good.offsets + 0.001, FPS)
    st.commit(req, new)
    assert st.good is new and st.is_clean() and st.good_version == st.version
    with pytest.raises(ValueError, match="frames"):
        st.commit(req, make_clip(t=10))


def tiny_denoiser(scale=0.01):
    from emodifftalk.diffusion.schedule import NoiseSchedule
    from emodifftalk.motion.denoiser import Denoiser

    cfg = build_config("tiny", ["diffusion.num_train_steps=50", "diffusion.window_frames=16",
                                "diffusion.context_frames=4"])
    torch.manual_seed(0)
    model = Denoiser(audio_dim=cfg.audio.feature_dim, d_model=16, n_heads=2, n_layers=1, rank=4,
                     offset_scale=scale).eval()
    with torch.no_grad():  # a bigger output layer than the tiny init, so samples differ visibly
        model.coef_out.weight.normal_(0, 0.5)
    return model, NoiseSchedule(50, "cosine"), cfg


def test_resample_spans_only_touches_dirty_frames_and_fades():
    model, schedule, cfg = tiny_denoiser()
    clip = make_clip(t=40, v=10)
    template = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    aus = clip.aus.copy()
    aus[12:20, K12] += 0.3
    seen = []
    new = resample_spans(model, schedule, template, aus, None, clip.offsets, [(12, 20)], cfg, steps=2,
                         fade_frames=3, window_frames=16, context_frames=4,
                         progress=lambda f, m: seen.append(f))
    assert new.shape == clip.offsets.shape and new.dtype == np.float32
    np.testing.assert_array_equal(new[:12], clip.offsets[:12])  # before the span: untouched
    np.testing.assert_array_equal(new[23:], clip.offsets[23:])  # after span + fade: untouched
    assert np.abs(new[12:20] - clip.offsets[12:20]).max() > 1e-4
    # the fade moves monotonically back towards the old motion
    d = [np.abs(new[f] - clip.offsets[f]).mean() for f in (20, 21, 22)]
    assert d[2] < d[0]
    assert seen and seen[-1] == pytest.approx(1.0)
    # long span → several windows, each continuing the previous one; deterministic for a seed
    a = resample_spans(model, schedule, template, aus, None, clip.offsets, [(0, 40)], cfg, steps=2,
                       window_frames=16, context_frames=4, seed=3)
    b = resample_spans(model, schedule, template, aus, None, clip.offsets, [(0, 40)], cfg, steps=2,
                       window_frames=16, context_frames=4, seed=3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="outside"):
        resample_spans(model, schedule, template, aus, None, clip.offsets, [(30, 50)], cfg, steps=2)


def test_worker_commits_edits_and_reports_failures():
    clip = make_clip(t=20)
    st = ViewerState(clip)
    changes = []
    w = EditWorker(st, None, on_change=lambda: changes.append(st.status.message), debounce=0.01).start()
    try:
        st.set_offset("AU01", 0.4)  # no motion model: only the AU codes (opacity) change
        w.request_edit()
        assert w.wait_idle(10)
        assert st.is_clean() and st.good is not clip
        np.testing.assert_array_equal(st.good.offsets, clip.offsets)
        assert any("edited" in c for c in changes)
        good = st.good

        def broken(request, progress):
            raise RuntimeError("sampler exploded")

        w.resample = broken
        st.set_offset("AU01", 0.5)
        w.request_edit()
        assert w.wait_idle(10)
        assert st.good is good and "sampler exploded" in st.status.error
        done = threading.Event()
        w.submit("job", lambda progress: done.set())
        assert w.wait_idle(10) and done.is_set()
        w.submit("bad job", lambda progress: 1 / 0)
        assert w.wait_idle(10) and "bad job failed" in st.status.error
    finally:
        w.stop()


def test_splat_arrays_covariance_and_view_frame():
    from emodifftalk.rig.gaussians import Gaussians
    from emodifftalk.viewer.splats import ViewFrame, splat_arrays

    s = 0.5 ** 0.5
    g = Gaussians(means=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
                  quats=torch.tensor([[1.0, 0, 0, 0], [s, 0, 0, s]]),  # identity, 90° about z
                  scales=torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]),
                  opacities=torch.tensor([0.5, 1.2]), colors=torch.tensor([[0.1, 0.2, 0.3], [1.5, 0, 0]]))
    view = ViewFrame(center=np.array([1.0, 1.0, 1.0]), scale=10.0)
    out = splat_arrays(g, view)
    np.testing.assert_allclose(out["centers"], [[0, 10, 20], [-10, -10, -10]], atol=1e-5)
    np.testing.assert_allclose(out["covariances"][0], np.diag([1.0, 4.0, 9.0]), atol=1e-5)
    np.testing.assert_allclose(out["covariances"][1], np.diag([4.0, 1.0, 9.0]), atol=1e-5)  # x and y swap
    assert out["opacities"].shape == (2, 1) and out["opacities"].max() == 1.0
    assert out["rgbs"].max() == 1.0


def test_load_animation_dir(tmp_path):
    from emodifftalk.pipeline.animate import write_au_csv
    from emodifftalk.viewer.source import SourceError, load_animation_dir

    clip = make_clip(t=8, v=5)
    d = tmp_path / "anim"
    d.mkdir()
    np.save(d / "offsets.npy", clip.offsets)
    write_au_csv(d / "aus.csv", clip.aus, FPS)
    (d / "animation.json").write_text(json.dumps({"fps": 30.0}))
    got, audio, info = load_animation_dir(d, n_vertices=5)
    assert got.fps == 30.0 and audio is None and info["fps"] == 30.0
    np.testing.assert_allclose(got.aus, clip.aus, atol=1e-4)
    np.testing.assert_array_equal(got.offsets, clip.offsets)
    with pytest.raises(SourceError, match="vertices"):
        load_animation_dir(d, n_vertices=6)
    (d / "aus.csv").unlink()
    with pytest.raises(SourceError, match="aus.csv"):
        load_animation_dir(d, n_vertices=5)
