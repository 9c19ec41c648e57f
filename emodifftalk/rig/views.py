"""Input of a rig reconstruction: the multi-view images of one identity's neutral moment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class RigDataError(ValueError):
    """The input of one identity cannot be used (missing camera, wrong image size, ...)."""


@dataclass
class NeutralViews:
    """Multi-view images of the neutral moment of one identity (all cameras, float [0, 1])."""

    identity: str
    clip: str
    frame: int
    verts: torch.Tensor  # (V, 3)
    images: torch.Tensor  # (C, H, W, 3)
    viewmats: torch.Tensor  # (C, 4, 4)
    Ks: torch.Tensor  # (C, 3, 3)
    names: list[str]
    width: int
    height: int
    holdout: int  # index into the C cameras

    @property
    def train_idx(self) -> list[int]:
        return [i for i in range(len(self.names)) if i != self.holdout]


def select_neutral_views(frames_samples: list[dict], template: dict, cfg) -> NeutralViews:
    """Pick the neutral moment and check its cameras/images; RigDataError says what is wrong."""
    if not frames_samples:
        raise RigDataError("no frames samples (multi-view images) for this identity")
    identities = sorted({str(s["meta"]["identity"]) for s in frames_samples})
    if len(identities) != 1:
        raise RigDataError(f"frames samples of several identities were mixed: {identities}")
    identity = identities[0]
    clips = sorted({str(s["meta"]["clip"]) for s in frames_samples})
    want = int(cfg.rig.neutral_frame)
    first = [s for s in frames_samples if str(s["meta"]["clip"]) == clips[0]]
    hits = [s for s in first if int(s["meta"]["frame"]) == want]
    if not hits:
        have = sorted(int(s["meta"]["frame"]) for s in first)
        raise RigDataError(f"identity {identity!r}: no neutral frame: clip {clips[0]!r} has frames samples "
                           f"for frames {have[:10]}, rig.neutral_frame={want}")
    s = hits[0]
    cams = s.get("cameras") or []
    if len(cams) < 2:
        raise RigDataError(f"{s['key']}: {len(cams)} camera(s); need >= 2 (one is held out)")
    width, height = int(cams[0]["width"]), int(cams[0]["height"])
    images, viewmats, Ks, names = [], [], [], []
    for cam in cams:
        name = str(cam["name"])
        if name not in s["images"]:
            raise RigDataError(f"{s['key']}: missing image for camera {name!r} "
                               f"(images: {sorted(s['images'])})")
        img = np.asarray(s["images"][name])
        if (int(cam["width"]), int(cam["height"])) != (width, height):
            raise RigDataError(f"{s['key']}: camera {name!r} is {cam['width']}x{cam['height']}, camera "
                               f"{cams[0]['name']!r} is {width}x{height}; all cameras must share one size")
        if img.shape != (height, width, 3):
            raise RigDataError(f"{s['key']}: image of camera {name!r} has shape {img.shape}, "
                               f"expected ({height}, {width}, 3)")
        images.append(torch.from_numpy(img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)))
        viewmats.append(torch.as_tensor(np.asarray(cam["viewmat"], dtype=np.float32)))
        Ks.append(torch.as_tensor(np.asarray(cam["K"], dtype=np.float32)))
        names.append(name)
    holdout = int(cfg.rig.holdout_camera)
    if not -len(names) <= holdout < len(names):
        raise RigDataError(f"rig.holdout_camera={holdout} but {s['key']} has {len(names)} cameras")
    verts = s.get("verts")
    if verts is None:
        raise RigDataError(f"{s['key']}: no verts.npy (mesh of the neutral moment)")
    verts = torch.as_tensor(np.asarray(verts, dtype=np.float32))
    n_template = int(np.asarray(template["verts"]).shape[0])
    if verts.shape != (n_template, 3):
        raise RigDataError(f"{s['key']}: verts {tuple(verts.shape)} do not match the template's "
                           f"{n_template} vertices")
    return NeutralViews(identity, clips[0], want, verts, torch.stack(images), torch.stack(viewmats),
                        torch.stack(Ks), names, width, height, holdout % len(names))
