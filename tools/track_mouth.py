#!/usr/bin/env python3
"""Track a real speaker's mouth in a video: ``NAME.mouth.csv`` for ``emodifftalk eval speech``.

For each video frame, MediaPipe's face mesh (468 landmarks) gives the inner lips' gap, the
distance between the upper and lower inner-lip midpoints (landmarks 13 and 14), over the distance
between the outer eye corners (33 and 263), which the mouth does not move: a size- and
distance-free opening. Rows without a face leave ``aperture`` empty. With the CSV beside the
video (or beside its audio under the same name), ``eval speech`` reports how the predicted mouth
follows the real one (``r_tracked``) and how the real mouth follows the envelope
(``r_env_tracked``).

MediaPipe is not a dependency of emodifftalk. Its 0.10 wheels carry the face-mesh model inside the
package (nothing is downloaded); install them in an environment of their own, e.g.
``python -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe==0.10.14 imageio-ffmpeg``, and run
``/tmp/mp/bin/python tools/track_mouth.py VIDEO [VIDEO ...] [--out DIR]``. Frames are decoded by
the ffmpeg that imageio-ffmpeg ships, at the video's nominal frame rate (variable-rate files are
resampled to it), so row k is at k / fps seconds.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

UPPER_LIP, LOWER_LIP = 13, 14  # MediaPipe face mesh: inner-lip midpoints
EYE_OUTER = (33, 263)  # outer eye corners: the face-size normaliser
TRACK_SUFFIX = ".mouth.csv"  # = emodifftalk.eval.speech.TRACK_SUFFIX (this script runs without the package)


def aperture(points: np.ndarray) -> float:
    """Inner-lip gap over eye-corner distance, from (468+, 2) landmark pixel coordinates."""
    gap = np.linalg.norm(points[UPPER_LIP] - points[LOWER_LIP])
    return float(gap / np.linalg.norm(points[EYE_OUTER[0]] - points[EYE_OUTER[1]]))


def write_track(path: Path, fps: float, apertures: list[float | None]) -> None:
    """``frame,time_s,aperture`` rows (empty aperture: no face), the format ``eval speech`` reads."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "time_s", "aperture"])
        for i, a in enumerate(apertures):
            w.writerow([i, f"{i / fps:.5f}", "" if a is None else f"{a:.5f}"])


def video_frames(path: Path):
    """(fps, iterator of RGB frames) at the video's nominal frame rate."""
    import imageio_ffmpeg

    probe = imageio_ffmpeg.read_frames(str(path))
    meta = next(probe)
    probe.close()
    fps = float(meta["fps"])
    frames = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={fps}"])
    meta = next(frames)
    w, h = meta["size"]
    return fps, (np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in frames)


def track(path: Path) -> tuple[float, list[float | None]]:
    import mediapipe as mp  # the legacy solutions API of mediapipe 0.10, model inside the wheel

    fps, frames = video_frames(path)
    out: list[float | None] = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for frame in frames:
            found = mesh.process(frame).multi_face_landmarks
            if not found:
                out.append(None)
                continue
            h, w = frame.shape[:2]
            pts = np.array([[p.x * w, p.y * h] for p in found[0].landmark])
            out.append(aperture(pts))
    return fps, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="folder for the CSVs (default: beside each video)")
    args = ap.parse_args(argv)
    missing = [str(v) for v in args.videos if not v.is_file()]
    if missing:
        ap.error(f"no such video: {', '.join(missing)}")
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        ap.error("needs mediapipe 0.10 (pip install mediapipe==0.10.14); see this script's docstring")
    for v in args.videos:
        fps, apertures = track(v)
        dest = (args.out or v.parent) / (v.stem + TRACK_SUFFIX)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_track(dest, fps, apertures)
        found = sum(a is not None for a in apertures)
        print(f"{v}: {len(apertures)} frames at {fps:g} fps, face in {found}; wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
