"""Frontal-camera videos of RenderMe-360 clips for OpenFace (the AU labels of ``ingest``).

``export_frontal(SMC_DIR, OUT_DIR, camera="25")`` writes ``OUT_DIR/<actor>_<perf>.mp4`` per clip
that has frames of that camera (streamed: one frame decoded at a time, ``render.video.write_video``),
with the clip's audio muxed in for checking sync, plus ``OUT_DIR/run_openface.sh`` holding one
OpenFace 2.x command per video::

    FeatureExtraction -f OUT_DIR/0026_s1_all.mp4 -out_dir CSV_DIR -aus

OpenFace names its CSV after the video (``CSV_DIR/0026_s1_all.csv``), which is exactly the name
``emodifftalk ingest renderme360 ... --openface-dir CSV_DIR`` looks for (``<actor>_<perf>.csv``).
OpenFace timestamps are in seconds from the video start, and ingest resamples AUs by time, so the
video frame rate (``--fps``, default: the source rate) need not match the ingest ``--fps``.
Frame gaps in the source (missing frame ids) repeat the previous frame so timing stays exact.
Existing videos are skipped unless ``overwrite``.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.ingest.cameras import CropResize
from emodifftalk.ingest.clip import Timeline
from emodifftalk.ingest.images import decode_rgb, image_size
from emodifftalk.ingest.renderme360 import SMCClip, discover_smc
from emodifftalk.render.video import write_video
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

OPENFACE_SCRIPT = "run_openface.sh"


def _frames(clip, camera: str, crop: CropResize, timeline: Timeline, available: list[int]):
    """Frames of ``camera`` at the timeline's rate, decoded one at a time."""
    have = set(available)
    last = None
    for j in range(timeline.n_frames):
        f = timeline.source_frame(j)
        if f in have or last is None:
            src = f if f in have else min(have, key=lambda x: abs(x - f))
            last = decode_rgb(clip.image_data(camera, src), crop, channel_order=clip.channel_order,
                              what=f"{clip.identity}/{clip.clip} camera {camera} frame {src}")
        yield last


def export_clip(raw: str | Path, anno: str | Path | None, out_path: Path, *, camera: str = "25", size: int = 0,
                fps: float | None = None, with_audio: bool = True) -> dict[str, Any]:
    """Write one clip's ``camera`` video; returns {"status", "path", "n_frames", "reason"}."""
    clip = SMCClip(raw, anno)
    try:
        if camera not in clip.camera_names():
            return {"status": "skipped", "path": None, "n_frames": 0,
                    "reason": f"no frames (or calibration) of camera {camera}; cameras: {clip.camera_names()}"}
        available = clip.frame_ids(camera)
        w, h = image_size(clip.image_data(camera, available[0]))
        crop = CropResize.square(w, h, size)
        src_fps = clip.source_fps
        timeline = Timeline(src_fps, float(fps or src_fps), clip.n_source_frames())
        audio, sr = None, 16000
        if with_audio:
            got = clip.audio()
            if got is not None:
                audio, sr = got
                audio = np.clip(audio[: int(round(timeline.n_frames / timeline.fps * sr))], -1.0, 1.0)
        write_video(out_path, _frames(clip, camera, crop, timeline, available), timeline.fps, audio=audio,
                    sample_rate=int(sr))
        return {"status": "ok", "path": str(out_path), "n_frames": timeline.n_frames, "reason": None}
    finally:
        clip.close()


def export_frontal(smc_dir: str | Path, out_dir: str | Path, *, camera: str = "25", size: int = 0,
                   fps: float | None = None, overwrite: bool = False, with_audio: bool = True,
                   openface_bin: str = "FeatureExtraction", csv_dir: str | Path | None = None) -> list[dict]:
    """Export every clip's frontal video; returns one record per clip (ok / exists / skipped / failed)."""
    pairs, skipped = discover_smc(smc_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_dir = Path(csv_dir) if csv_dir else out_dir / "openface"
    records = [{"clip": f"{s.get('identity')}_{s.get('clip')}", "status": "skipped", "reason": s["reason"]}
               for s in skipped]
    commands = []
    for p in pairs:
        name = f"{p.actor}_{p.perf}"
        path = out_dir / f"{name}.mp4"
        rec: dict[str, Any] = {"clip": name, "path": str(path)}
        if path.exists() and not overwrite:
            rec.update(status="exists", reason=None)
        else:
            try:
                rec.update(export_clip(p.raw, p.anno, path, camera=camera, size=size, fps=fps, with_audio=with_audio))
            except Exception as e:  # noqa: BLE001 - one broken file must not stop the export
                log.error("export %s failed: %s", name, e)
                rec.update(status="failed", reason=f"{type(e).__name__}: {e}")
        if rec["status"] in ("ok", "exists"):
            commands.append(f"{shlex.quote(openface_bin)} -f {shlex.quote(str(path))} "
                            f"-out_dir {shlex.quote(str(csv_dir))} -aus")
        records.append(rec)
    if commands:
        script = "#!/bin/sh\n# OpenFace 2.x AU extraction; CSVs are named <actor>_<perf>.csv\nset -e\n" + \
                 "\n".join(commands) + "\n"
        atomic_write_text(out_dir / OPENFACE_SCRIPT, script)
    return records
