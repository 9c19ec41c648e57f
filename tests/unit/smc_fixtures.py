"""Tiny RenderMe-360-style ``.smc`` files, following the "Minimal fixture recipe" of
``docs/formats/renderme360-smc.md`` (h5py + numpy + PIL; no real data).

World: y-down, metres, the head centre at ``HEAD`` and the face looking toward -z; camera
``25`` is frontal at (0, -0.5, -1.2), camera ``00`` is off to the side. ``RT`` is camera-to-world
with OpenCV axes; ``K`` uses OpenCV's pixel-centre convention (pixel (0, 0) centre at 0).
Images: a flat background ``BG_RGB`` with a bright ``FG_RGB`` block drawn where ``MARK`` (a known
3D point) projects, so a test can find that point in the ingested image. Masks are 255 on a disc
around the head's projection.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

HEAD = np.array([0.0, -0.5, 0.0])
MARK = HEAD + np.array([0.03, -0.02, -0.1])  # a point in front of the face
BG_RGB = (40, 80, 160)  # distinct channels: a red/blue swap shows up
FG_RGB = (250, 30, 20)
CAMERA_CENTRES = {"25": np.array([0.0, -0.5, -1.2]), "00": np.array([0.7, -0.6, -0.95]),
                  "18": np.array([-0.7, -0.45, -0.95])}
SAMPLE_RATE = 48000
FPS = 30


def look_at_c2w(centre, target=HEAD) -> np.ndarray:
    """OpenCV camera-to-world (x right, y down, z forward) for a camera at ``centre`` looking at ``target``."""
    z = np.asarray(target, float) - np.asarray(centre, float)
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)  # world y is down, so the camera's y (down) follows it
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, centre
    return c2w


def intrinsics(width: int, height: int, focal: float | None = None) -> np.ndarray:
    """OpenCV K (principal point at the image centre in OpenCV's pixel-centre convention)."""
    f = focal if focal is not None else 3.0 * width
    return np.array([[f, 0.0, width / 2 - 0.5], [0.0, f, height / 2 - 0.5], [0.0, 0.0, 1.0]])


def project_opencv(points, k, c2w) -> np.ndarray:
    """(N, 2) OpenCV pixel coordinates (pixel centres at integers) of world points."""
    w2c = np.linalg.inv(c2w)
    p = np.asarray(points, float).reshape(-1, 3) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = p[:, :2] / p[:, 2:3]
    return uv * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]


def encode_png(array: np.ndarray) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def encode_jpeg(array: np.ndarray, quality: int = 92) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="JPEG", quality=quality)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def camera_image(cid: str, width: int, height: int, frame: int = 0, block: int = 4, focal=None) -> np.ndarray:
    """(H, W, 3) RGB: background + a ``block`` x ``block`` FG square centred on MARK's projection."""
    k, c2w = intrinsics(width, height, focal), look_at_c2w(CAMERA_CENTRES[cid])
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BG_RGB
    u, v = project_opencv(MARK, k, c2w)[0]
    # block pixels i0..i0+block-1 have (OpenCV) centroid i0 + (block-1)/2 == u
    i0, j0 = int(round(u - (block - 1) / 2)), int(round(v - (block - 1) / 2))
    img[max(j0, 0):max(j0 + block, 0), max(i0, 0):max(i0 + block, 0)] = FG_RGB
    img[0, 0] = (frame * 40) % 256, 0, 0  # frames differ
    return img


def mask_image(cid: str, width: int, height: int, focal=None) -> np.ndarray:
    k, c2w = intrinsics(width, height, focal), look_at_c2w(CAMERA_CENTRES[cid])
    u, v = project_opencv(HEAD, k, c2w)[0]
    yy, xx = np.mgrid[0:height, 0:width]
    r = 0.16 / 1.2 * k[0, 0]  # ~ head radius in pixels
    return np.where((xx - u) ** 2 + (yy - v) ** 2 <= r * r, 255, 0).astype(np.uint8)


def flame_verts(n: int = 60, frame: int = 0, seed: int = 0) -> np.ndarray:
    """(n, 3) points on a 0.1 m sphere around HEAD (frame-dependent jitter)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (HEAD + 0.1 * d + 0.001 * frame).astype(np.float32)


def keypoints3d(frame: int = 0) -> np.ndarray:
    return flame_verts(73, frame, seed=1).astype(np.float64)


def write_smc(path: Path, *, actor: str = "0001", perf: str = "s1_all", kind: str = "raw",
              cameras=("00", "25"), n_frames: int = 3, height: int = 16, width: int = 20, audio: bool = True,
              audio_seconds: float | None = None, flame: bool = False, missing_camera: str | None = None,
              drop_mask: tuple[str, int] | None = None, empty_keypoints: tuple[str, int] | None = None,
              calibrated=None, jpeg: bool = False, focal=None, dist=None, frame_ids=None) -> Path:
    """One ``.smc`` of the given ``kind``: "raw" (frames + audio + calibration), "anno" (masks,
    calibration, keypoints, FLAME) or "all" (everything in one file, Part-2 style raw).

    missing_camera: a camera that is calibrated but has no colour frames (or masks).
    drop_mask: (camera, frame) whose mask is absent; empty_keypoints: (camera, frame) whose
    Keypoints2d array has length 0 (and Keypoints3d of that frame too).
    """
    import h5py

    calibrated = cameras if calibrated is None else calibrated
    frames = list(range(n_frames)) if frame_ids is None else list(frame_ids)
    with_frames = kind in ("raw", "all")
    with_labels = kind in ("anno", "all")
    with h5py.File(path, "w") as f:
        f.attrs.update({"actor_id": actor, "performance_part": perf, "capture_date": "20220101", "age": 30,
                        "gender": "female", "color": "yellow", "height": 1.7, "weight": 60.0})
        cam_grp = f.create_group("Camera")
        cam_grp.attrs.update({"num_device": len(cameras), "num_frame": n_frames, "resolution": [height, width]})
        for cid in cameras:
            g = cam_grp.require_group(cid)
            if cid == missing_camera:
                continue
            if with_frames:
                color = g.create_group("color")
                for fid in frames:
                    img = camera_image(cid, width, height, fid, focal=focal)
                    color.create_dataset(str(fid), data=encode_jpeg(img) if jpeg else encode_png(img))
            if with_labels:
                mask = g.create_group("mask")
                for fid in frames:
                    if drop_mask == (cid, fid):
                        continue
                    mask.create_dataset(str(fid), data=encode_png(mask_image(cid, width, height, focal)))
        if audio and with_frames:
            secs = n_frames / FPS if audio_seconds is None else audio_seconds
            n = int(round(SAMPLE_RATE * secs))
            t = np.arange(n) / SAMPLE_RATE
            tone = np.sin(2 * np.pi * 440 * t)
            stereo = np.stack([0.5 * tone, 0.3 * tone], 1).astype(np.float32)
            a = cam_grp.require_group("00").create_group("audio")
            a.create_dataset("audio", data=stereo)
            a.create_dataset("sample_rate", data=SAMPLE_RATE)
        calib = f.create_group("Calibration")
        for cid in calibrated:
            c = calib.create_group(cid)
            c.create_dataset("K", data=intrinsics(width, height, focal))
            c.create_dataset("D", data=np.zeros(5) if dist is None else np.asarray(dist, float))
            c.create_dataset("RT", data=look_at_c2w(CAMERA_CENTRES[cid]))
        if with_labels:
            k2 = f.create_group("Keypoints2d")
            k2.attrs["num_frame"] = n_frames
            k3 = f.create_group("Keypoints3d")
            k3.attrs["num_frame"] = n_frames
            for cid in cameras:
                if cid == missing_camera:
                    continue
                g = k2.create_group(cid)
                for fid in frames:
                    if empty_keypoints == (cid, fid):
                        g.create_dataset(str(fid), data=np.zeros((0, 2)))
                        continue
                    contour = np.zeros((33, 2)) + [width / 2, height / 2]
                    kp = project_opencv(keypoints3d(fid), intrinsics(width, height, focal),
                                        look_at_c2w(CAMERA_CENTRES[cid]))
                    g.create_dataset(str(fid), data=np.concatenate([contour, kp]))
            for fid in frames:
                if empty_keypoints is not None and empty_keypoints[1] == fid:
                    k3.create_dataset(str(fid), data=np.zeros((0, 3)))
                else:
                    k3.create_dataset(str(fid), data=keypoints3d(fid))
            if flame:
                fl = f.create_group("FLAME")
                fl.attrs["num_frame"] = n_frames
                for fid in frames:
                    g = fl.create_group(str(fid))
                    for key in ("global_pose", "neck_pose", "jaw_pose", "left_eye_pose", "right_eye_pose", "trans"):
                        g.create_dataset(key, data=np.zeros(3, np.float32))
                    g.create_dataset("shape", data=np.zeros(100, np.float32))
                    g.create_dataset("exp", data=np.zeros(50, np.float32))
                    g.create_dataset("verts", data=flame_verts(60, fid))
                    g.create_dataset("albedos", data=np.zeros((3, 8, 8), np.float32))  # (3,256,256) in real data
                uv = f.create_group("UV_texture")
                for fid in frames:
                    uv.create_dataset(str(fid), data=encode_png(np.zeros((8, 8, 3), np.uint8)))
                scan = f.create_group("Scan")
                scan.create_dataset("vertex", data=flame_verts(10).astype(np.float64))
                scan.create_dataset("vertex_indices", data=np.array([[0, 1, 2]]))
                sm = f.create_group("ScanMask")
                for cid in cameras:
                    sm.create_dataset(cid, data=encode_png(mask_image(cid, width, height, focal)))
    return path


def write_pair(root: Path, actor: str = "0001", perf: str = "s1_all", **kw) -> tuple[Path, Path]:
    """``<actor>_<perf>_raw.smc`` + ``_anno.smc`` in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    raw = write_smc(root / f"{actor}_{perf}_raw.smc", actor=actor, perf=perf, kind="raw", **kw)
    anno = write_smc(root / f"{actor}_{perf}_anno.smc", actor=actor, perf=perf, kind="anno", **kw)
    return raw, anno


def write_corrupt(path: Path, like: Path | None = None) -> Path:
    """A broken ``.smc``: the first half of ``like`` (truncated HDF5) or random bytes."""
    if like is not None:
        data = like.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def write_openface_for(path: Path, n_frames: int, fps: float = FPS, seed: int = 0) -> Path:
    """An OpenFace CSV (``<actor>_<perf>.csv``) with random AUs at ``fps``."""
    from emodifftalk.data.openface import write_openface_csv

    aus = np.random.default_rng(seed).uniform(0, 1, (n_frames, 17))
    return write_openface_csv(path, aus, fps)


def make_dataset(root: Path, *, height: int = 16, width: int = 20) -> dict[str, Path]:
    """The standard test set: speech pair 0001/s1_all (+ OpenFace CSV), expression pair 0001/e0
    with FLAME, a Part-2 style single raw 0002/s1_all with a missing camera, a dropped mask and
    empty keypoints (its anno twin), and a corrupt 0003/s1_all_raw.smc."""
    smc = root / "smc"
    of = root / "openface"
    of.mkdir(parents=True, exist_ok=True)
    write_pair(smc, "0001", "s1_all", height=height, width=width)
    write_pair(smc, "0001", "e0", audio=False, flame=True, height=height, width=width)
    write_pair(smc, "0002", "s2_all", height=height, width=width, missing_camera="00", drop_mask=("25", 1),
               empty_keypoints=("25", 2))
    write_smc(smc / "0004_s1_all_raw.smc", actor="0004", perf="s1_all", kind="raw", cameras=("25",),
              height=height, width=width)
    good = smc / "0001_s1_all_raw.smc"
    write_corrupt(smc / "0003_s1_all_raw.smc", like=good)
    write_openface_for(of / "0001_s1_all.csv", 3)
    write_openface_for(of / "0002_s2_all.csv", 3)
    return {"smc": smc, "openface": of}
