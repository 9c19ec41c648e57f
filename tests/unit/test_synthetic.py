"""Synthetic multi-view talking-head generator: determinism, layout, AU behaviour, renders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emodifftalk.au import AU_INDEX, NUM_AUS, SPEECH_AUS
from emodifftalk.config import SynthConfig
from emodifftalk.data.audio import read_audio
from emodifftalk.data.openface import read_openface_csv
from emodifftalk.data.schema import VERTEX_SETS
from emodifftalk.data.synthetic import (
    EMOTION_AUS,
    EMOTIONS,
    Voice,
    apply_rig,
    gaussian_head,
    generate_dataset,
    make_au_rig,
    make_clip,
    make_identity,
    make_template,
    synthesize_clip,
    synthesize_speech,
)
from emodifftalk.data.synthetic.head import vertex_normals

FPS, SR = 25.0, 16000
UPPER_EMOTION_AUS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09")


def tiny_cfg(**kw) -> SynthConfig:
    # augment_prob=0: the layout test checks the 16 kHz mono audio.wav (augmentation, which
    # writes other rates/channels, is tested in test_synthetic_v2.py)
    base = dict(n_identities=3, clips_per_identity=1, clip_seconds=1.0, n_cameras=2, image_size=32,
                mesh_resolution=12, n_free_points=200, image_stride=5, openface_failure_rate=0.1,
                augment_prob=0.0, seed=0)
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cfg = tiny_cfg()
    return cfg, generate_dataset(cfg, tmp_path_factory.mktemp("synth") / "raw", progress=False)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------
# Layout written on disk
# ------------------------------------------------------------------------------------------


def test_layout_and_shapes(dataset):
    cfg, root = dataset
    info = json.loads((root / "dataset.json").read_text())
    assert info["identities"] == ["id000", "id001", "id002"]
    assert info["fps"] == FPS and info["sample_rate"] == SR
    assert info["generator"]["config"]["seed"] == 0
    t_frames = round(cfg.clip_seconds * cfg.fps)
    v = cfg.mesh_resolution**2
    for ident in info["identities"]:
        d = root / ident
        tv = np.load(d / "template" / "verts.npy", allow_pickle=False)
        faces = np.load(d / "template" / "faces.npy", allow_pickle=False)
        assert tv.shape == (v, 3) and tv.dtype == np.float32
        assert faces.dtype == np.int32 and faces.min() >= 0 and faces.max() < v
        sets = json.loads((d / "template" / "vertex_sets.json").read_text())
        assert set(sets) == set(VERTEX_SETS) and all(len(sets[k]) > 0 for k in VERTEX_SETS)
        cams = json.loads((d / "cameras.json").read_text())["cameras"]
        assert [c["name"] for c in cams] == ["cam00", "cam01"]
        assert np.array(cams[0]["K"]).shape == (3, 3) and np.array(cams[0]["viewmat"]).shape == (4, 4)
        cd = d / "clip00"
        meta = json.loads((cd / "meta.json").read_text())
        assert meta["n_frames"] == t_frames and meta["emotion"] in EMOTIONS
        assert meta["identity"] == ident and meta["clip"] == "clip00"
        audio, sr = read_audio(cd / "audio.wav")
        assert sr == SR and audio.shape == (round(t_frames / cfg.fps * SR),)
        verts = np.load(cd / "verts.npy", allow_pickle=False)
        assert verts.shape == (t_frames, v, 3) and verts.dtype == np.float32
        # frame 0 is the neutral moment: the tracked mesh equals the template up to tracking noise
        assert np.abs(verts[0] - tv).max() < 1e-3
        frames = list(range(0, t_frames, cfg.image_stride))
        assert meta["rendered_frames"] == frames
        for cam in cams:
            pngs = sorted(p.name for p in (cd / "images" / cam["name"]).iterdir())
            assert pngs == [f"{f:05d}.png" for f in frames]
            img = Image.open(cd / "images" / cam["name"] / "00000.png")
            assert img.size == (cfg.image_size, cfg.image_size) and img.mode == "RGB"
    assert not list(root.parent.glob(".tmp-*"))  # atomic: no temp dir left behind


def test_images_show_a_head_that_differs_between_cameras(dataset):
    _, root = dataset
    d = root / "id000" / "clip00" / "images"
    a = np.asarray(Image.open(d / "cam00" / "00000.png"), dtype=np.float32) / 255
    b = np.asarray(Image.open(d / "cam01" / "00000.png"), dtype=np.float32) / 255
    for img in (a, b):
        fg = np.abs(img - 1.0).max(axis=2) > 0.05  # background is white
        assert 0.15 < fg.mean() < 0.95
        assert img[fg].std() > 0.02  # not a flat silhouette
    assert np.abs(a - b).mean() > 0.02


def test_openface_csv_reads_back_with_au24_missing(dataset):
    cfg, root = dataset
    cd = root / "id001" / "clip00"
    header = (cd / "openface.csv").read_text().splitlines()[0]
    assert "AU24" not in header and header.startswith("frame, face_id, timestamp")
    n = json.loads((cd / "meta.json").read_text())["n_frames"]
    of = read_openface_csv(cd / "openface.csv", fps=cfg.fps, n_frames=n)
    assert of.aus.shape == (n, NUM_AUS)
    assert not of.mask[:, AU_INDEX["AU24"]].any()
    n_failed = int((~of.frame_valid).sum())
    assert 1 <= n_failed <= n // 2  # openface_failure_rate=0.1 -> some rows masked


def test_same_seed_same_bytes_different_seed_differs(dataset, tmp_path):
    _, root = dataset
    again = generate_dataset(tiny_cfg(), tmp_path / "again", progress=False)
    first, second = _files(root), _files(again)
    assert first.keys() == second.keys()
    for rel in first:
        assert first[rel] == second[rel], f"{rel} differs between two runs with the same seed"
    other = generate_dataset(tiny_cfg(seed=1, n_cameras=2), tmp_path / "other", progress=False)
    third = _files(other)
    for rel in ("id000/clip00/audio.wav", "id000/clip00/verts.npy", "id000/template/verts.npy"):
        assert first[rel] != third[rel], f"{rel} is identical for seeds 0 and 1"


def test_refuses_to_overwrite(dataset, tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    cfg = tiny_cfg(n_free_points=0, image_stride=25)
    with pytest.raises(FileExistsError):
        generate_dataset(cfg, out, progress=False)
    assert (out / "keep.txt").read_text() == "user data"
    generate_dataset(cfg, out, overwrite=True, progress=False)
    assert (out / "dataset.json").is_file() and not (out / "keep.txt").exists()


def test_v1_world_is_still_reachable_and_exactly_linear(tmp_path):
    """synth.version=1 writes the original world: linear rig meshes, labels = truth + 1 % noise,
    no v2 extras."""
    cfg = tiny_cfg(version=1, n_identities=3, image_stride=25)
    root = generate_dataset(cfg, tmp_path / "v1", progress=False)
    info = json.loads((root / "dataset.json").read_text())
    assert info["generator"]["version"] == 1 and not (root / "gallery.png").exists()
    cd = root / "id001" / "clip00"
    assert not (cd / "aus_true.npy").exists() and not (cd / "head_pose.npy").exists()
    ident = make_identity(cfg, 1)
    clip = make_clip(cfg, ident, 1, 0)
    linear = apply_rig(ident.template.verts, ident.rig, clip.speech.aus)
    assert np.abs(np.load(cd / "verts.npy") - linear).max() < 1e-3  # tracking noise only


def test_cli_synth(tmp_path):
    from emodifftalk.cli import main

    out = tmp_path / "cli"
    rc = main(["synth", "--out", str(out), "--no-progress", "synth.n_identities=3",
               "synth.clips_per_identity=1", "synth.clip_seconds=0.5", "synth.n_cameras=2",
               "synth.image_size=16", "synth.mesh_resolution=8", "synth.n_free_points=50",
               "synth.image_stride=20"])
    assert rc == 0 and (out / "id002" / "clip00" / "images" / "cam01" / "00000.png").is_file()
    assert main(["synth", "--out", str(out), "synth.n_identities=3"]) == 1  # exists, no --overwrite


# ------------------------------------------------------------------------------------------
# Speech and AU tracks
# ------------------------------------------------------------------------------------------


def _frame_rms(audio, fps=FPS, sr=SR):
    hop = int(sr / fps)
    n = len(audio) // hop
    return np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1))


def test_speech_lengths_and_leading_silence():
    rng = np.random.default_rng(3)
    clip = synthesize_clip(2.0, SR, FPS, rng, emotion="neutral")
    t = round(2.0 * FPS)
    assert clip.aus.shape == (t, NUM_AUS) and clip.audio.shape == (round(t / FPS * SR),)
    assert clip.phones[0][0] == "sil" and 0.25 < clip.phones[0][2] < 0.4
    lead_frames = int((clip.phones[0][2] - 0.1) * FPS)
    assert np.abs(clip.aus[:lead_frames]).max() < 0.02  # neutral face in the leading silence
    assert np.all(clip.aus[0] == 0)
    rms = _frame_rms(clip.audio)
    assert rms[: lead_frames].max() < 0.01 and rms.max() > 0.05


def test_mouth_aus_vary_with_speech_loudness():
    audio, aus = synthesize_speech(4.0, SR, FPS, np.random.default_rng(5), emotion="neutral",
                                   gestures=False)
    mouth = [AU_INDEX[a] for a in SPEECH_AUS]
    assert aus[:, mouth].std(axis=0).max() > 0.1
    opening = aus[:, AU_INDEX["AU25"]] + aus[:, AU_INDEX["AU26"]]
    rms = _frame_rms(audio)
    n = min(len(rms), len(opening))
    assert np.corrcoef(rms[:n], opening[:n])[0, 1] > 0.4
    # a neutral clip has no upper-face emotion AUs
    upper = [AU_INDEX[a] for a in UPPER_EMOTION_AUS]
    assert np.abs(aus[:, upper]).max() < 1e-6


@pytest.mark.parametrize("emotion", [e for e in EMOTIONS if e != "neutral"])
def test_emotion_aus_follow_the_label(emotion):
    clip = synthesize_clip(2.5, SR, FPS, np.random.default_rng(11), emotion=emotion, gestures=False)
    late = clip.aus[int(1.2 * FPS):]  # after the ramp-in
    assert clip.intensity > 0.5
    for name, weight in EMOTION_AUS[emotion].items():
        # the label's AUs sit near weight * intensity (slow ±25 % variation; speech only adds)
        assert late[:, AU_INDEX[name]].mean() > 0.7 * weight * clip.intensity, (emotion, name)
    for name in UPPER_EMOTION_AUS:
        if name not in EMOTION_AUS[emotion]:
            assert late[:, AU_INDEX[name]].max() < 1e-6, (emotion, name)


def test_emotion_and_voice_modulate_audio():
    voice = Voice(f0=120.0, formant_scale=1.0, rate=1.0, breathiness=0.04)
    angry = synthesize_clip(3.0, SR, FPS, np.random.default_rng(2), "angry", voice).audio
    sad = synthesize_clip(3.0, SR, FPS, np.random.default_rng(2), "sad", voice).audio
    assert np.sqrt((angry**2).mean()) > 1.3 * np.sqrt((sad**2).mean())

    def pitch(audio):  # autocorrelation peak over 60..400 Hz on the voiced part
        x = audio[int(0.4 * SR): int(2.5 * SR)]
        ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * len(x))) ** 2)[: SR // 60]
        lo = SR // 400
        return SR / (lo + np.argmax(ac[lo:]))

    low = synthesize_clip(3.0, SR, FPS, np.random.default_rng(4), "neutral", voice).audio
    high = synthesize_clip(3.0, SR, FPS, np.random.default_rng(4), "neutral",
                           Voice(f0=220.0, formant_scale=1.1, rate=1.0, breathiness=0.04)).audio
    assert pitch(high) > 1.4 * pitch(low)


def test_blinks_and_determinism():
    a = synthesize_clip(8.0, SR, FPS, np.random.default_rng(9), "happy")
    b = synthesize_clip(8.0, SR, FPS, np.random.default_rng(9), "happy")
    c = synthesize_clip(8.0, SR, FPS, np.random.default_rng(10), "happy")
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.aus, b.aus)
    assert not np.array_equal(a.audio, c.audio)
    blink = a.aus[:, AU_INDEX["AU45"]]
    assert len(a.blinks) >= 1 and blink.max() > 0.6 and (blink < 0.1).mean() > 0.5


# ------------------------------------------------------------------------------------------
# Template, rig, Gaussian head
# ------------------------------------------------------------------------------------------


def test_template_mesh_and_vertex_sets():
    tp = make_template(16, np.random.default_rng(0))
    assert tp.verts.shape == (256, 3) and tp.faces.shape[1] == 3
    height = np.ptp(tp.verts[:, 1])
    assert 0.18 < height < 0.25  # a ~0.2 m tall head
    n = vertex_normals(tp.verts, tp.faces)
    assert (np.sum(n * (tp.verts - tp.verts.mean(0)), axis=1) > 0).mean() > 0.95  # outward
    face = tp.verts[tp.vertex_sets["face"]]
    assert face[:, 2].mean() > 0.05  # the face is on the +z side
    lips, eyes = tp.verts[tp.vertex_sets["lips"]], tp.verts[tp.vertex_sets["eyes"]]
    assert lips[:, 1].mean() < eyes[:, 1].mean()
    other = make_template(16, np.random.default_rng(1))
    assert np.abs(other.verts - tp.verts).max() > 1e-3  # identities differ in shape


def test_au_rig_is_anatomical():
    tp = make_template(24, np.random.default_rng(0))
    rig = make_au_rig(tp, np.random.default_rng(1))
    assert rig.shape == (NUM_AUS, 24 * 24, 3) and rig.dtype == np.float32
    mag = np.linalg.norm(rig, axis=2).max(axis=1)
    assert np.all(mag > 1.5e-3) and np.all(mag < 0.02)  # a few mm .. 2 cm
    jaw, upper = tp.vertex_sets["jaw"], tp.vertex_sets["upper_face"]
    lips = tp.vertex_sets["lips"]
    assert rig[AU_INDEX["AU26"], jaw, 1].mean() < -2e-3  # jaw drop moves the jaw down
    assert np.abs(rig[AU_INDEX["AU26"], upper]).max() < 1e-4  # and not the forehead
    assert rig[AU_INDEX["AU01"], upper, 1].max() > 4e-3  # brows up
    assert np.abs(rig[AU_INDEX["AU01"], lips]).max() < 1e-4
    assert np.abs(rig[AU_INDEX["AU12"], lips]).max() > 3e-3
    other = make_au_rig(tp, np.random.default_rng(2))
    assert np.abs(other - rig).max() > 1e-4  # identity-specific variation


def test_gaussian_head_counts_and_free_points_are_rigid():
    tp = make_template(12, np.random.default_rng(0))
    tp.params.n_free_points = 100
    rig = make_au_rig(tp, np.random.default_rng(1))
    aus = np.zeros(NUM_AUS, np.float32)
    aus[AU_INDEX["AU26"]] = 1.0
    moved = tp.verts + np.einsum("k,kvc->vc", aus, rig)
    g0 = gaussian_head(tp, tp.verts)
    g1 = gaussian_head(tp, moved)
    v = tp.n_verts
    assert len(g0) == v + 100
    assert np.allclose(g0.means[v:], g1.means[v:])  # hair / shoulders do not move with speech
    assert not np.allclose(g0.means[:v], g1.means[:v])
    assert np.allclose(np.linalg.norm(g0.quats, axis=1), 1, atol=1e-5)
    assert g0.colors.min() >= 0 and g0.colors.max() <= 1 and (g0.scales > 0).all()


def test_gestures_flash_brows_on_pitch_accents_and_leave_the_rest_unchanged():
    with_g = synthesize_clip(6.0, SR, FPS, np.random.default_rng(21), "neutral")
    without = synthesize_clip(6.0, SR, FPS, np.random.default_rng(21), "neutral", gestures=False)
    assert with_g.phones == without.phones and with_g.blinks == without.blinks
    brows = with_g.aus[:, [AU_INDEX["AU01"], AU_INDEX["AU02"]]]
    assert brows.max() > 0.3 and np.abs(without.aus[:, AU_INDEX["AU01"]]).max() < 1e-6
    # single-AU events outside the emotion label on a neutral clip
    others = [AU_INDEX[a] for a in ("AU04", "AU05", "AU06", "AU07", "AU09")]
    assert with_g.aus[:, others].max() > 0.2 or with_g.aus[:, AU_INDEX["AU12"]].max() > 0.2
    # accented vowels are louder: frames with raised brows carry more energy than the rest of speech
    rms = _frame_rms(with_g.audio)
    n = min(len(rms), len(brows))
    speech = rms[:n] > 0.02
    flash = speech & (brows[:n, 0] > 0.2)
    assert flash.sum() > 3 and rms[:n][flash].mean() > 1.1 * rms[:n][speech & ~flash].mean()
    assert np.all(with_g.aus[0] == 0)  # still a neutral first frame


def test_worker_processes_do_not_change_the_bytes(tmp_path):
    """One process per identity (3 workers) vs two identities sharing a process (2 workers). Both
    run in fresh processes: after the rest of the suite has run in this process, its in-process
    espeak-ng audio was seen to differ in a few samples, so it is not the reference here."""
    three = _files(generate_dataset(tiny_cfg(), tmp_path / "w3", progress=False, workers=3))
    two = _files(generate_dataset(tiny_cfg(), tmp_path / "w2", progress=False, workers=2))
    assert three.keys() == two.keys()
    assert [rel for rel in three if three[rel] != two[rel]] == []
