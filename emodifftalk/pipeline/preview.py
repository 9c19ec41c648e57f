"""Preview of packed data: one clip's multi-view frames as a camera grid video with its audio.

Frames samples hold the images of the moments that were packed (``data.frames_stride``); the
video holds each packed moment until the next one, so it plays at the clip's real fps and stays
in sync with the audio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emodifftalk.data.schema import SPLITS
from emodifftalk.data.shards import iter_dataset, load_manifest
from emodifftalk.render.video import frame_grid, write_video


def _find_clip(root: Path, clip_key: str | None) -> dict:
    manifest = load_manifest(root)
    splits = [s for s in SPLITS if manifest.get("counts", {}).get("seq", {}).get(s, 1)]
    for split in splits:
        for sample in iter_dataset(root, "seq", split):
            if clip_key is None or sample["key"] == clip_key:
                return sample
    raise ValueError(f"{root}: no sequence sample {clip_key!r}" if clip_key else f"{root}: no sequence samples")


def clip_frames(root: Path, identity: str, clip: str, split: str) -> list[dict]:
    prefix = f"{identity}__{clip}__"
    return sorted((s for s in iter_dataset(root, "frames", split) if s["key"].startswith(prefix)),
                  key=lambda s: int(s["meta"]["frame"]))


def preview_clip(shards: str | Path, out: str | Path, clip_key: str | None = None, max_cameras: int = 4,
                 cols: int = 2) -> Path:
    root = Path(shards)
    seq = _find_clip(root, clip_key)
    meta = seq["meta"]
    frames = clip_frames(root, meta["identity"], meta["clip"], meta["split"])
    if not frames:
        raise ValueError(f"{root}: clip {seq['key']} has no packed frames samples")
    if len(frames) < 2:
        raise ValueError(f"{root}: clip {seq['key']} has only its neutral frame packed; repack with "
                         "data.frames_stride=K (e.g. 5) to preview motion")
    names = [c["name"] for c in frames[0]["cameras"]][:max_cameras]
    grids = [frame_grid([f["images"][n] for n in names], cols=min(cols, len(names))) for f in frames]
    starts = [int(f["meta"]["frame"]) for f in frames]
    n_frames = int(meta["n_frames"])

    def video_frames():
        j = 0
        for t in range(n_frames):
            while j + 1 < len(starts) and starts[j + 1] <= t:
                j += 1
            yield grids[j]

    return write_video(out, video_frames(), float(meta["fps"]), audio=seq["audio"].astype(np.float32),
                       sample_rate=int(seq["sample_rate"]))
