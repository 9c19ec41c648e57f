"""The v2 face: nonlinear deformation from AU activations and lip articulators, plus head pose.

v1 meshes were exactly ``template + Σ_k a_k D_k``, so 17 numbers explained every vertex. Here:

* per-identity AU *shapes*: each identity's fields are built on its own smooth warp of the face
  layout (centres, extents and directions move, not one field scaled);
* the jaw is a true rotation about a hinge axis near the ears (``rig.jaw_hinge``), skinned by
  angle, never linearised;
* lip articulators that are not AUs (``visemes.py``): rounding/protrusion, labiodental tuck and
  spreading add their own displacement fields; bilabial closure keeps the lower lip up against
  the upper lip while the jaw (chin) still rotates, so the same AU26 gives different lips;
* AU interactions: a smile while the jaw is open stretches the mouth corners down and out;
* small rigid head motion (nods with pitch accents, slow sway) is a separate (T, 4, 4) track:
  the registered meshes do not contain it, the renders do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from emodifftalk.au import AU_INDEX

from .head import MOUTH_HALF_WIDTH, MOUTH_Y, Template, bump, lip_weights, smoothstep
from .rig import JAW_ANGLE, _mouth_line_y, jaw_hinge, jaw_weights, make_au_rig
from .visemes import A_CLOSE, A_LABIO, A_ROUND, A_SPREAD

MM = 1e-3
_JAW, _AU12 = AU_INDEX["AU26"], AU_INDEX["AU12"]
LAYOUT_WARP = 0.025  # direction-space amplitude of the per-identity warp of the AU layout


@dataclass
class Face:
    """One identity's face model (all fields in metres per unit activation)."""

    template: Template
    au_fields: np.ndarray  # (17, V, 3); the AU26 row is zero: the jaw rotates instead
    art_fields: np.ndarray  # (5, V, 3) per articulator (jaw and close rows zero: handled by rotation)
    smile_open: np.ndarray  # (V, 3) extra corner motion per unit AU12 x AU26
    jaw: np.ndarray  # (V,) jaw skinning weights
    lower_lip: np.ndarray  # (V,)
    upper_lip: np.ndarray  # (V,)
    hinge: np.ndarray  # (3,)
    jaw_angle: float  # rad at AU26 = 1


def _warped_layout(template: Template, rng: np.random.Generator) -> Template:
    """The template with its direction-space layout smoothly warped (identity-specific AU shapes)."""
    d = template.dirs.astype(np.float64)
    f = rng.uniform(2.0, 5.0, 4)
    p = rng.uniform(0, 2 * np.pi, 4)
    a = rng.uniform(0.4, 1.0, 4) * LAYOUT_WARP
    w = d.copy()
    w[:, 0] += a[0] * np.sin(f[0] * d[:, 1] + p[0]) + a[1] * np.sin(f[1] * d[:, 0] + p[1])
    w[:, 1] += a[2] * np.sin(f[2] * d[:, 0] + p[2]) + a[3] * np.sin(f[3] * d[:, 1] + p[3])
    return dataclasses.replace(template, dirs=w.astype(np.float32))


def make_face(template: Template, rng: np.random.Generator, warp: bool = True,
              jaw_angle: float = JAW_ANGLE) -> Face:
    v = template.verts.astype(np.float64)
    layout = _warped_layout(template, rng) if warp else template
    fields = make_au_rig(layout, rng).astype(np.float64)
    fields[_JAW] = 0.0
    d = layout.dirs.astype(np.float64)
    x = v[:, 0]
    sgn = np.where(x >= 0, 1.0, -1.0)
    size = float(np.ptp(v[:, 1])) / 0.21
    amp = rng.uniform(1.1, 1.4, 4) * size
    upper, lower = lip_weights(d)
    lips = np.clip(upper + lower + 0.6 * bump(d, 0.0, MOUTH_Y, 0.26, 0.08), 0, 1)
    corners = bump(d, MOUTH_HALF_WIDTH, MOUTH_Y, 0.08, 0.07) + bump(d, -MOUTH_HALF_WIDTH, MOUTH_Y, 0.08, 0.07)
    art = np.zeros((5, len(v), 3))
    # rounding: lips forward, the mouth narrows toward the midline (orbicularis, AU18/22-like)
    art[A_ROUND, :, 2] = 9.0 * MM * lips * amp[0]
    art[A_ROUND, :, 0] = -0.28 * x * lips * amp[0]
    # labiodental: the lower lip tucks up and back under the upper teeth
    art[A_LABIO] = np.outer(lower, [0.0, 5.0 * MM, -3.5 * MM]) * amp[1]
    art[A_LABIO, :, 1] += 1.0 * MM * upper * amp[1]
    # spreading: corners outward and slightly back, the lips thin
    art[A_SPREAD, :, 0] = sgn * 5.0 * MM * corners * amp[2]
    art[A_SPREAD, :, 2] = -1.5 * MM * corners * amp[2]
    art[A_SPREAD, :, 1] = -0.12 * (v[:, 1] - _mouth_line_y(v, d)) * lips * amp[2]
    smile_open = np.stack([sgn * 2.5 * MM * corners, -3.5 * MM * corners, np.zeros(len(v))], 1) * amp[3]
    front = smoothstep(0.3, 0.6, d[:, 2])
    return Face(template=template, au_fields=fields.astype(np.float32), art_fields=art.astype(np.float32),
                smile_open=smile_open.astype(np.float32), jaw=jaw_weights(d), lower_lip=lower * front,
                upper_lip=upper * front, hinge=jaw_hinge(v), jaw_angle=jaw_angle * float(rng.uniform(0.9, 1.1)))


def deform(face: Face, aus: np.ndarray, art: np.ndarray) -> np.ndarray:
    """Registered meshes (T, V, 3) float32 for AU activations (T, 17) and articulators (T, 5)."""
    aus = np.asarray(aus, dtype=np.float32)
    art = np.asarray(art, dtype=np.float32)
    p = (face.template.verts[None].astype(np.float32)
         + np.einsum("tk,kvc->tvc", aus, face.au_fields)
         + np.einsum("ta,avc->tvc", art, face.art_fields)
         + (aus[:, _AU12] * aus[:, _JAW])[:, None, None] * face.smile_open[None])
    close = art[:, A_CLOSE]
    # bilabial closure: the lower lip does not follow the jaw, and the upper lip comes down to it
    weight = face.jaw[None] * (1.0 - close[:, None] * face.lower_lip[None])  # (T, V)
    angle = (face.jaw_angle * aus[:, _JAW])[:, None] * weight
    c, s = np.cos(angle), np.sin(angle)
    y, z = p[..., 1] - face.hinge[1], p[..., 2] - face.hinge[2]
    out = p.copy()
    out[..., 1] = face.hinge[1] + c * y - s * z
    out[..., 2] = face.hinge[2] + s * y + c * z
    out[..., 1] -= (close * aus[:, _JAW])[:, None] * face.upper_lip[None] * 2.0 * MM
    return out.astype(np.float32)


def linear_au_fields(face: Face) -> np.ndarray:
    """(17, V, 3) displacement per unit AU at the neutral face, the jaw linearised: what an AU
    edit moves to first order (used by the AU-edit response) and the generic basis of the
    OpenFace-like label estimator."""
    fields = face.au_fields.astype(np.float64).copy()
    v = face.template.verts.astype(np.float64)
    rel = v - face.hinge
    a = face.jaw_angle
    rot = np.stack([np.zeros(len(v)), (np.cos(a) - 1) * rel[:, 1] - np.sin(a) * rel[:, 2],
                    np.sin(a) * rel[:, 1] + (np.cos(a) - 1) * rel[:, 2]], 1)
    fields[_JAW] = rot * face.jaw[:, None]
    return fields.astype(np.float32)


# ------------------------------------------------------------------------------------------
# Rigid head motion
# ------------------------------------------------------------------------------------------

MAX_ROTATION_DEG = 2.5
MAX_TRANSLATION_M = 3e-3


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def head_pose_track(times: np.ndarray, lead: float, accents: list[tuple[float, float]],
                    rng: np.random.Generator, pivot=(0.0, -0.08, -0.02)) -> np.ndarray:
    """(T, 4, 4) world-from-registered rigid poses: slow sway plus a small nod on each pitch
    accent, identity at frame 0 (the neutral moment) and ramping in after the lead silence.
    The pivot sits at the top of the neck."""
    t = np.asarray(times, dtype=np.float64)
    ramp = np.clip((t - lead * 0.5) / 0.6, 0, 1)
    f = rng.uniform(0.15, 0.6, 6)
    ph = rng.uniform(0, 2 * np.pi, 6)
    a = rng.uniform(0.3, 1.0, 6)
    sway = np.stack([a[k] * np.sin(2 * np.pi * f[k] * t + ph[k]) - a[k] * np.sin(ph[k]) for k in range(6)], 1)
    nod = np.zeros(len(t))
    for s, e in accents:
        x = (t - s + 0.05) / max(e - s + 0.25, 0.1)
        nod += np.where((x > 0) & (x < 1), np.sin(np.pi * x), 0.0) * rng.uniform(0.5, 1.0)
    rot = np.deg2rad(MAX_ROTATION_DEG) * 0.5 * sway[:, :3] * ramp[:, None]
    rot[:, 1] += np.deg2rad(1.2) * np.clip(nod, 0, 1.5) * ramp  # pitch: nod down on accents
    trans = MAX_TRANSLATION_M * 0.5 * sway[:, 3:] * ramp[:, None]
    pivot = np.asarray(pivot, dtype=np.float64)
    poses = np.tile(np.eye(4), (len(t), 1, 1))
    for i in range(len(t)):
        r = _rotation(*rot[i])
        poses[i, :3, :3] = r
        poses[i, :3, 3] = pivot - r @ pivot + trans[i]
    return poses.astype(np.float32)
