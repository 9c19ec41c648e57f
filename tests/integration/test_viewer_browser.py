"""The viewer in headless Chromium: page loads, splat count, an AU slider changes the rendered head.

Uses Debian's ``chromium`` (``scripts/install_browser.sh``; the test runs it when the browser is
missing) driven by Playwright's Python package, WebGL through SwiftShader. No training: a tiny rig
built here (a few hundred Gaussians), a random feature line, a random tiny motion denoiser and a
pre-baked ``animate``-style folder. Screenshots land in the test's tmp dir.
"""

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emodifftalk import au

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-gl=swiftshader", "--enable-unsafe-swiftshader"]
FPS = 25.0
EDIT_AU = "AU06"  # cheek raiser: not a speech AU, so lip lock does not clamp it


def _ensure_chromium() -> None:
    pytest.importorskip("playwright.sync_api", reason="playwright (python package) is not installed")
    pytest.importorskip("viser", reason="viser is not installed")
    if Path(CHROMIUM).exists():
        return
    script = Path(__file__).resolve().parents[2] / "scripts" / "install_browser.sh"
    try:
        r = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"chromium is not installed and scripts/install_browser.sh could not run: {e}")
    if r.returncode != 0 or not Path(CHROMIUM).exists():
        pytest.skip(f"chromium could not be installed by scripts/install_browser.sh: {r.stderr.strip()[-300:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_rig(out: Path) -> Path:
    """A UV-sphere head (362 bound Gaussians) with a hair cap (100 free), a camera, and a feature line."""
    from emodifftalk.config import build_config
    from emodifftalk.models.feature_line import FeatureLine
    from emodifftalk.rig.binding import bind_free_points, vertex_one_ring
    from emodifftalk.rig.feature_line_fit import save_feature_line
    from emodifftalk.rig.gaussians import GaussianRig
    from emodifftalk.render.cameras import look_at
    from emodifftalk.rig.toy import _pattern, uv_sphere

    radius = 0.09
    verts, faces = uv_sphere(16, 24, radius)
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(100, 3))
    dirs[:, 1] = np.abs(dirs[:, 1]) + 0.6
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    hair = (dirs * radius * rng.uniform(1.05, 1.2, (100, 1))).astype(np.float32)
    v, n = len(verts), len(verts) + len(hair)
    edge = 2 * np.pi * radius / 24
    scales = np.full((n, 3), 0.45 * edge, np.float32)
    colors = np.concatenate([_pattern(verts, radius), np.tile([[0.25, 0.15, 0.08]], (len(hair), 1))]).astype(np.float32)
    verts_t, faces_t = torch.from_numpy(verts), torch.from_numpy(faces).long()
    nbr_idx, nbr_w = vertex_one_ring(faces_t, v)
    a_idx, a_w = bind_free_points(torch.from_numpy(hair), verts_t, k=4)
    size = 256
    f = size * 1.6
    eye = (0.0, 0.02, 0.55)
    cams = {"viewmats": [look_at(eye, (0.0, 0.0, 0.0)).tolist()], "Ks": [[[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]],
            "width": size, "height": size}
    rig = GaussianRig(
        identity="tiny", means=torch.cat([verts_t, torch.from_numpy(hair)]), log_scales=torch.from_numpy(np.log(scales)),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), opacity_logits=torch.full((n,), 2.5),
        colors=torch.from_numpy(colors), n_bound=v, facial_idx=torch.nonzero(verts_t[:, 2] > 0.3 * radius).squeeze(1),
        faces=faces_t, vertex_nbr_idx=nbr_idx, vertex_nbr_w=nbr_w, free_anchor_idx=a_idx, free_anchor_w=a_w,
        info={"cameras": cams})
    rig.save(out)
    torch.manual_seed(0)
    fl = FeatureLine(q=rig.n_facial, init_std=1.0, max_delta=0.9)  # random but strong: AU edits fade the face
    save_feature_line(fl, out, {"note": "random, for the viewer test"}, build_config("tiny"))
    return out


def make_animation(out: Path, rig_dir: Path, n_frames: int = 20) -> Path:
    """An ``animate``-style folder: a small nod of the head and smooth AU curves."""
    from emodifftalk.pipeline.animate import write_au_csv
    from emodifftalk.rig.gaussians import GaussianRig

    rig = GaussianRig.load(rig_dir)
    verts = rig.canonical_verts.numpy()
    t = np.arange(n_frames) / FPS
    offsets = np.zeros((n_frames, rig.n_bound, 3), np.float32)
    offsets[:, :, 1] = (0.004 * np.sin(2 * np.pi * t))[:, None] * (verts[None, :, 2] > 0)
    aus = (0.2 + 0.1 * np.sin(2 * np.pi * t[:, None] + np.arange(au.NUM_AUS))).astype(np.float32)
    out.mkdir()
    np.save(out / "offsets.npy", offsets)
    write_au_csv(out / "aus.csv", aus, FPS)
    (out / "animation.json").write_text(json.dumps({"fps": FPS, "n_frames": n_frames}))
    return out


def tiny_models(with_speech: bool = False):
    """Random tiny models (no training): a motion denoiser and, if asked, Speech-to-AU on 16 mel bands."""
    from emodifftalk.config import S2AUConfig, build_config
    from emodifftalk.diffusion.schedule import NoiseSchedule
    from emodifftalk.models.audio_frontend import MelFrontend
    from emodifftalk.motion.denoiser import Denoiser
    from emodifftalk.s2au.inference import S2AUBundle
    from emodifftalk.s2au.model import SpeechToAU
    from emodifftalk.pipeline.animate import Models

    cfg = build_config("tiny", ["diffusion.num_train_steps=50", "s2au.window_seconds=1.0",
                                "s2au.overlap_seconds=0.2"])
    torch.manual_seed(0)
    motion = Denoiser(audio_dim=16, d_model=16, n_heads=2, n_layers=1, rank=4, offset_scale=0.01).eval()
    with torch.no_grad():  # random but not tiny outputs: re-sampled motion of about a centimetre
        motion.coef_out.weight.normal_(0, 0.5)
    s2au = None
    if with_speech:
        scfg = S2AUConfig(d_model=16, n_heads=2, local_layers=1, global_layers=0, local_window=3, dropout=0.0,
                          calib_dim=8)
        s2au = S2AUBundle(model=SpeechToAU(scfg, in_dim=16).eval(), frontend=MelFrontend(16), cfg=cfg,
                          encoder_id="mel16")
    return Models(s2au=s2au, motion=motion, motion_cfg=cfg, schedule=NoiseSchedule(50, "cosine"),
                  motion_frontend=MelFrontend(16).eval(), text2au=None)


def make_wav(path: Path, seconds: float = 0.8) -> Path:
    from emodifftalk.data.audio import write_wav

    t = np.arange(int(seconds * 16000)) / 16000
    write_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / seconds)).astype(np.float32), 16000)
    return path


def _mean_abs_diff(a: bytes, b: bytes) -> float:
    import io

    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.float32)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32)
    assert x.shape == y.shape
    return float(np.abs(x - y).mean())


def _scene_region(page) -> dict:
    """The part of the canvas left of the control panel and below any notification (the head is there)."""
    return page.evaluate("""() => {
        let el = document.getElementById('emodifftalk-info');
        while (el && !['absolute', 'fixed'].includes(getComputedStyle(el).position)) el = el.parentElement;
        const panel = el ? el.getBoundingClientRect() : {left: window.innerWidth};
        let top = 0;
        for (const n of document.querySelectorAll('.mantine-Notification-root'))
            top = Math.max(top, n.getBoundingClientRect().bottom);
        return {x: 0, y: Math.ceil(top), width: Math.floor(panel.left) - 4,
                height: window.innerHeight - Math.ceil(top)};
    }""")


def _scene_shot(page, region: dict) -> bytes:
    # page.screenshot with a clip: an element screenshot of the live WebGL canvas waits for
    # "stability" that never comes under SwiftShader
    return page.screenshot(clip=region)


def _wait_status_idle(page, app, timeout=60.0) -> dict:
    """Wait until the worker is idle and the page's status block says the good clip is current."""
    assert app.worker.wait_idle(timeout)
    deadline = time.time() + timeout
    while time.time() < deadline:
        d = page.evaluate("""() => { const e = document.getElementById('emodifftalk-status');
                                     return e ? {...e.dataset, text: e.innerText} : null; }""")
        if d and d["busy"] == "0" and d["version"] == d["goodVersion"]:
            return d
        if d and d["error"] == "1":
            return d
        time.sleep(0.2)
    raise AssertionError(f"page status never became idle: {d}")


def _set_slider_to_max(page, label: str) -> None:
    """Drive a viser slider like a user: focus its thumb (found through its <label>) and press End."""
    uuid = page.evaluate("""(text) => { for (const l of document.querySelectorAll('label'))
                                          if (l.textContent.trim() === text) return l.htmlFor;
                                        return null; }""", label)
    assert uuid, f"no slider labelled {label!r} in the page"
    root = page.locator(f'[id="{uuid}"]')
    thumb = root.locator('[role="slider"]') if root.locator('[role="slider"]').count() else root
    thumb.first.focus()
    page.keyboard.press("End")


def test_viewer_in_headless_chromium(tmp_path):
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    from emodifftalk.config import build_config
    from emodifftalk.edits import apply_edits, load_edits
    from emodifftalk.viewer.app import start_viewer

    rig_dir = make_tiny_rig(tmp_path / "rig")
    anim = make_animation(tmp_path / "anim", rig_dir)
    cfg = build_config("tiny", ["diffusion.window_frames=16", "diffusion.context_frames=4", "infer.image_size=64"])
    app = start_viewer(rig_dir, cfg, animation=anim, audio=make_wav(tmp_path / "voice.wav"), models=tiny_models(),
                       port=_free_port(), out_dir=tmp_path / "out", edit_steps=2)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    k = au.AU_INDEX[EDIT_AU]
    try:
        assert app.url.startswith("http://127.0.0.1:")
        n_points = app.rig.n_points
        assert 400 <= n_points <= 500 and app.n_gaussians == n_points  # the scene node holds every Gaussian
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 600})
                # fixedDpr: viser otherwise lowers the canvas resolution when software GL is slow,
                # which would change the image without any edit
                page.goto(app.url + "/?fixedDpr=1", timeout=60_000)
                page.wait_for_selector("#emodifftalk-info", timeout=60_000)
                info = page.evaluate("() => ({...document.getElementById('emodifftalk-info').dataset})")
                assert int(info["gaussians"]) == n_points and int(info["frames"]) == 20
                page.wait_for_selector("canvas", timeout=60_000)
                region = _scene_region(page)
                assert region["width"] > 400 and region["height"] > 300, region
                # the splat renderer sorts in a web worker: wait until the canvas stops changing
                before, prev = None, _scene_shot(page, region)
                for _ in range(40):
                    time.sleep(0.5)
                    cur = _scene_shot(page, region)
                    if _mean_abs_diff(prev, cur) < 0.05:
                        before = cur
                        break
                    prev = cur
                assert before is not None, "the canvas never settled"
                (shots / "before.png").write_bytes(before)
                page.screenshot(path=str(shots / "page_before.png"))
                blank = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(shots / "before.png").convert("L"))
                assert blank.std() > 5, "the canvas shows no head (blank image)"

                _set_slider_to_max(page, f"{EDIT_AU} {au.ACTION_UNITS[EDIT_AU].facs_name}")
                deadline = time.time() + 20
                while app.state.slider_values()[k] != 1.0 and time.time() < deadline:
                    time.sleep(0.1)
                assert app.state.slider_values()[k] == 1.0, "moving the slider in the page did not reach the server"
                status = _wait_status_idle(page, app)
                assert status["error"] == "0", status
                assert app.state.is_clean() and np.all(app.state.good.aus[:, k] == 1.0)

                after, diff = None, 0.0
                for _ in range(40):  # wait for the new splats to be drawn
                    time.sleep(0.5)
                    after = _scene_shot(page, region)
                    diff = _mean_abs_diff(before, after)
                    if diff > 1.0:
                        break
                (shots / "after.png").write_bytes(after)
                page.screenshot(path=str(shots / "page_after.png"))
                print(f"canvas mean |diff| after the {EDIT_AU} edit: {diff:.2f} (0-255 scale)")
                assert diff > 1.0, f"the rendered head did not change after the AU edit (mean |diff| {diff:.3f})"

                # timeline: the clip's sound is in the page; Play starts it and the frames advance
                assert page.locator("audio").count() == 1
                page.wait_for_function("() => document.querySelector('audio').duration > 0.7", timeout=20_000)
                page.get_by_role("button", name="Play").click()
                page.wait_for_selector("audio[autoplay]", state="attached", timeout=20_000)
                deadline = time.time() + 20
                while app.frame == 0 and time.time() < deadline:
                    time.sleep(0.1)
                assert app.playing and app.frame > 0
                page.get_by_role("button", name="Pause").click()
                deadline = time.time() + 20
                while app.playing and time.time() < deadline:
                    time.sleep(0.1)
                assert not app.playing

                # export the edit curves from the page: the file reproduces the viewer's AU codes
                page.get_by_role("button", name="Edits JSON").click()
                _wait_status_idle(page, app)
                exported = tmp_path / "out" / "edits.json"
                assert exported.is_file()
                base = np.asarray(app.state.source_aus)
                np.testing.assert_array_equal(apply_edits(base, load_edits(exported), FPS, lip_lock=True),
                                              app.state.good.aus)

                # a failing edit shows its error in the page and keeps the last good animation
                good = app.state.good

                def broken(request, progress):
                    raise RuntimeError("sampler exploded on purpose")

                app.worker.resample = broken
                _set_slider_to_max(page, "AU01 inner brow raiser")
                page.wait_for_selector('#emodifftalk-status[data-error="1"]', timeout=30_000)
                assert "sampler exploded on purpose" in page.inner_text("#emodifftalk-status")
                assert app.state.good is good
                page.screenshot(path=str(shots / "page_error.png"))
            finally:
                browser.close()
    finally:
        app.stop()


def test_viewer_animates_audio_and_exports(tmp_path):
    """No browser: a wav animated in the viewer's worker, an AU edit, and the three exports."""
    pytest.importorskip("viser", reason="viser is not installed")
    from emodifftalk.config import build_config
    from emodifftalk.edits import apply_edits, load_edits
    from emodifftalk.rig.ply import read_ply
    from emodifftalk.viewer.app import start_viewer
    from emodifftalk.viewer.source import audio_from_video

    rig_dir = make_tiny_rig(tmp_path / "rig")
    cfg = build_config("tiny", ["diffusion.window_frames=16", "diffusion.context_frames=4", "infer.image_size=48",
                                "diffusion.ddim_steps=2"])
    app = start_viewer(rig_dir, cfg, animation=make_wav(tmp_path / "voice.wav", 1.2),
                       models=tiny_models(with_speech=True), port=_free_port(), out_dir=tmp_path / "out",
                       edit_steps=2)
    try:
        assert app.worker.wait_idle(120)
        st = app.state
        assert st.status.error is None, st.status.error
        assert st.n_frames == 30 and app.audio is not None and "animated from" in app.source
        assert np.abs(st.good.offsets).max() > 0  # motion sampled for the speech
        before = st.good
        st.set_range(12, 16)
        st.set_offset("AU12", 0.5)  # dirty: 12..16 plus 3 ramp frames each side; then a 4-frame fade
        app.worker.request_edit()
        assert app.worker.wait_idle(120) and st.is_clean() and st.status.error is None
        changed = np.flatnonzero(np.abs(st.good.offsets - before.offsets).reshape(30, -1).max(1) > 0)
        assert changed.min() == 9 and changed.max() <= 23 and set(range(12, 17)) <= set(changed)
        for job in (app._export_edits, app._export_video, app._export_ply):
            app.worker.submit(job.__name__, job)
        assert app.worker.wait_idle(300) and st.status.error is None, st.status.error
        out = tmp_path / "out"
        np.testing.assert_array_equal(apply_edits(st.source_aus, load_edits(out / "edits.json"), st.fps),
                                      st.good.aus)
        assert (out / "video.mp4").stat().st_size > 1000
        plys = sorted((out / "ply").glob("frame_*.ply"))
        assert len(plys) == 30 and len(read_ply(plys[0])["x"]) == app.rig.n_points
        app.worker.submit("again", app._export_edits)  # a second export never replaces the first
        assert app.worker.wait_idle(30) and (out / "edits-2.json").is_file()
        sound = audio_from_video(out / "video.mp4")  # how the viewer finds an animate folder's sound
        assert sound is not None and abs(len(sound) - 1.2 * 16000) < 0.1 * 16000

        class StubText2AU:  # Text-to-AU stand-in: "smile" asks for AU06 + AU12
            threshold = 0.5

            def predict_probs(self, texts):
                p = torch.zeros(len(texts), au.NUM_AUS)
                p[:, [au.AU_INDEX["AU06"], au.AU_INDEX["AU12"]]] = 0.9
                return p

        app.models.text2au = StubText2AU()
        app.text_box.value = "a warm smile"
        app._on_text(None)
        assert app.worker.wait_idle(120) and st.status.error is None, st.status.error
        assert st.text == "a warm smile" and "AU06, AU12" in app.text_html.content
        assert st.is_clean() and np.all(st.good.aus[:, au.AU_INDEX["AU06"]] >= 0.6 - 1e-6)
    finally:
        app.stop()


def test_view_cli_serves_the_page(tmp_path):
    """``emodifftalk view`` prints its URL and serves the viewer page on 127.0.0.1."""
    pytest.importorskip("viser", reason="viser is not installed")
    import os
    import sys
    import urllib.request

    rig_dir = make_tiny_rig(tmp_path / "rig")
    anim = make_animation(tmp_path / "anim", rig_dir)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "emodifftalk.cli", "view", str(rig_dir), "--animation", str(anim),
                             "--port", str(port), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url, lines = None, []
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("EmoDiffTalk viewer: "):
                url = line.split()[2]
                break
        assert url == f"http://127.0.0.1:{port}", "".join(lines)
        assert "462 Gaussians" in lines[-1]
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<html" in page.lower()
    finally:
        proc.terminate()
        proc.wait(30)
