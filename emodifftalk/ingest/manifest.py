"""From per-clip parts to a shard folder: template samples + ``manifest.json``.

Runs once at the end of an ingest (cheap: it reads only ``part.json`` files and the small
template candidates). The manifest has the same fields as ``emodifftalk pack`` writes, so
``validate_shards`` / ``emodifftalk inspect --validate`` / the shard reader work unchanged;
shard names are paths relative to the folder (``clips/<identity>__<clip>/seq-train-000000.tar``).

Templates: one per identity, picked among the clips' candidates by priority (RenderMe-360:
FLAME ``verts`` of the first FLAME frame of the lowest-numbered expression part, ``e0`` first;
folder manifests: the subject's template file). FLAME files carry no faces: such a template gets
an empty ``(0, 3)`` faces array (the rig falls back to nearest-neighbour spacing without faces)
unless ``--template-faces FACES.npy`` gives the topology (FLAME's ``f``, (9976, 3)). Vertex sets
come from the source, else from ``--template-vertex-sets SETS.json``, else from
``generic_vertex_sets`` (coarse regions in a head frame built from the frontal camera).
An identity that has seq samples but no template candidate gets a *placeholder* template
(0 vertices, ``meta.placeholder = true``) so the folder validates; its clips carry no verts.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.data.audio import SAMPLE_RATE
from emodifftalk.data.schema import SCHEMA_VERSION, SPLITS, VERTEX_SETS, template_key
from emodifftalk.data.shard_writer import MANIFEST, PACK_FIELDS, ShardSetWriter, encode_json, encode_npy
from emodifftalk.ingest.clip import CLIPS_DIR, PART_FILE, read_part
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

TEMPLATE_STAGING = ".templates-tmp"


# --------------------------------------------------------------------------------------------
# Vertex sets
# --------------------------------------------------------------------------------------------


def head_coordinates(verts: np.ndarray, forward, up) -> np.ndarray:
    """(V, 3) coordinates in a head frame (x across, y up, z towards the viewer), each axis
    scaled so the 2nd..98th percentile range spans [-1, 1]."""
    f = np.asarray(forward, dtype=np.float64)
    f /= np.linalg.norm(f)
    u = np.asarray(up, dtype=np.float64)
    u = u - f * (u @ f)
    u /= np.linalg.norm(u)
    r = np.cross(u, f)
    p = np.asarray(verts, dtype=np.float64) @ np.stack([r, u, f], axis=1)
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    return (p - (lo + hi) / 2) / np.maximum((hi - lo) / 2, 1e-9)


def generic_vertex_sets(verts: np.ndarray, forward=(0.0, 0.0, 1.0), up=(0.0, 1.0, 0.0)) -> dict[str, list[int]]:
    """Coarse ``schema.VERTEX_SETS`` for any head mesh from its geometry alone (fallback when the
    source gives none): the front half is the face, the upper half of it ``upper_face``, two
    boxes at eye height the eyes, a box at mouth height the lips, the lower front the jaw.
    Approximate by design: pass exact sets (e.g. FLAME's masks as JSON) for evaluation."""
    p = head_coordinates(verts, forward, up)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    face = (z > 0.2) & (y > -0.7) & (y < 0.6)
    sets = {
        "face": face,
        "upper_face": face & (y > 0.05),
        "eyes": (np.abs(x) > 0.12) & (np.abs(x) < 0.6) & (y > 0.05) & (y < 0.35) & (z > 0.45),
        "lips": (np.abs(x) < 0.35) & (y > -0.55) & (y < -0.2) & (z > 0.5),
        "jaw": (y > -0.85) & (y < -0.15) & (z > 0.0),
    }
    if not sets["face"].any():
        sets["face"] = np.ones(len(p), bool)
    return {k: np.flatnonzero(v).astype(int).tolist() for k, v in sets.items()}


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


def collect_parts(out_root: str | Path, keys: list[str] | None = None) -> dict[str, dict]:
    """``{clip key: part}`` of the finished clips (all, or those in ``keys``)."""
    root = Path(out_root) / CLIPS_DIR
    parts = {}
    if not root.is_dir():
        return parts
    wanted = None if keys is None else set(keys)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and d.name not in wanted:
            continue
        part = read_part(d / PART_FILE)
        if part is not None:
            parts[d.name] = part
    return parts


def _priority(rec: dict) -> tuple:
    return tuple(rec.get("priority") or [9])


def choose_templates(parts: dict[str, dict]) -> dict[str, tuple[str, dict]]:
    """``{identity: (clip key, template record)}``: the best candidate per identity."""
    best: dict[str, tuple[str, dict]] = {}
    for key in sorted(parts):
        rec = parts[key].get("template")
        if not rec:
            continue
        ident = parts[key]["identity"]
        if ident not in best or (_priority(rec), key) < (_priority(best[ident][1]), best[ident][0]):
            best[ident] = (key, rec)
    return best


def _load_overrides(faces_path, sets_path) -> tuple[np.ndarray | None, dict | None]:
    faces = sets = None
    if faces_path:
        faces = np.load(faces_path, allow_pickle=False)
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"--template-faces {faces_path}: expected an integer (F, 3) array, "
                             f"got {faces.dtype} {faces.shape}")
    if sets_path:
        sets = json.loads(Path(sets_path).read_text())
        missing = [s for s in VERTEX_SETS if s not in sets]
        if not isinstance(sets, dict) or missing:
            raise ValueError(f"--template-vertex-sets {sets_path}: needs lists for {list(VERTEX_SETS)} "
                             f"(missing {missing})")
    return faces, sets


def template_sample(out_root: Path, key: str, rec: dict, identity: str, faces_override=None,
                    sets_override=None) -> tuple[dict[str, bytes], dict]:
    """Members + meta of ``identity``'s template sample from a clip's candidate."""
    base = out_root / CLIPS_DIR / key
    verts = np.load(base / rec["verts"], allow_pickle=False).astype(np.float32)
    n = verts.shape[0]
    faces_note = "from the source"
    if rec.get("faces"):
        faces = np.load(base / rec["faces"], allow_pickle=False).astype(np.int32)
    elif faces_override is not None and faces_override.max(initial=-1) < n:
        faces, faces_note = faces_override.astype(np.int32), "from --template-faces"
    else:
        faces = np.zeros((0, 3), np.int32)
        faces_note = "none in the source (FLAME files hold vertices only): empty (0, 3) faces"
    if rec.get("vertex_sets"):
        sets, sets_note = json.loads((base / rec["vertex_sets"]).read_text()), "from the source"
    elif sets_override is not None and max((max(v, default=-1) for v in sets_override.values()), default=-1) < n:
        sets, sets_note = sets_override, "from --template-vertex-sets"
    else:
        sets = generic_vertex_sets(verts, rec.get("forward", (0, 0, 1)), rec.get("up", (0, 1, 0)))
        sets_note = "generic geometric fallback (ingest.manifest.generic_vertex_sets)"
    for name in VERTEX_SETS:
        sets.setdefault(name, [])
    if faces.size and (faces.min() < 0 or faces.max() >= n):
        raise ValueError(f"template of {identity} ({key}): face indices outside [0, {n})")
    members = {"verts.npy": encode_npy(verts), "faces.npy": encode_npy(faces),
               "vertex_sets.json": encode_json({k: [int(i) for i in v] for k, v in sets.items()})}
    meta = {"identity": identity, "n_vertices": int(n), "n_faces": int(faces.shape[0]), "source": rec.get("source"),
            "source_clip": key, "faces_note": faces_note, "vertex_sets_note": sets_note, "placeholder": False}
    return members, meta


def placeholder_template(identity: str) -> tuple[dict[str, bytes], dict]:
    members = {"verts.npy": encode_npy(np.zeros((0, 3), np.float32)),
               "faces.npy": encode_npy(np.zeros((0, 3), np.int32)),
               "vertex_sets.json": encode_json({k: [] for k in VERTEX_SETS})}
    meta = {"identity": identity, "n_vertices": 0, "n_faces": 0, "placeholder": True,
            "source": "placeholder: no clip of this identity has a mesh/FLAME template"}
    return members, meta


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def _write_templates(out_root: Path, parts: dict[str, dict], data_cfg, faces_path, sets_path,
                     shard_url: str | None) -> tuple[list[dict], dict[str, dict]]:
    faces_override, sets_override = _load_overrides(faces_path, sets_path)
    chosen = choose_templates(parts)
    with_seq = {p["identity"] for p in parts.values() if "seq_shard" in p["clip_entry"]}
    identities = sorted({p["identity"] for p in parts.values()})
    staging = out_root / TEMPLATE_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    info: dict[str, dict] = {}
    writer = ShardSetWriter(staging, "template", None, data_cfg.shard_max_bytes, data_cfg.shard_max_samples)
    for ident in identities:
        if ident in chosen:
            key, rec = chosen[ident]
            members, meta = template_sample(out_root, key, rec, ident, faces_override, sets_override)
        elif ident in with_seq:
            members, meta = placeholder_template(ident)
            log.warning("identity %s has seq samples but no template candidate: placeholder template written", ident)
        else:
            continue
        writer.write(template_key(ident), members, meta)
        info[ident] = {k: meta[k] for k in ("n_vertices", "n_faces", "source", "placeholder")}
        info[ident].update({k: meta[k] for k in ("source_clip", "faces_note", "vertex_sets_note") if k in meta})
    shards = writer.close()
    for old in out_root.glob("templates-*.tar"):
        old.unlink()
    for s in shards:
        if shard_url:
            from emodifftalk.ingest.clip import _upload

            _upload(staging / s["name"], shard_url.format(name=s["name"]))
        else:
            (staging / s["name"]).replace(out_root / s["name"])
    shutil.rmtree(staging, ignore_errors=True)
    return shards, info


def build_manifest(out_root: str | Path, parts: dict[str, dict], identity_splits: dict[str, str], data_cfg, *,
                   name: str, skipped: list[dict], ingest_info: dict[str, Any], template_faces=None,
                   template_vertex_sets=None, shard_url: str | None = None) -> Path:
    """Write the template shard(s) and ``manifest.json`` of ``out_root`` from ``parts``."""
    out_root = Path(out_root)
    template_shards, template_info = _write_templates(out_root, parts, data_cfg, template_faces,
                                                      template_vertex_sets, shard_url)
    shards = [s for key in sorted(parts) for s in parts[key]["shards"]] + template_shards
    counts: dict[str, dict[str, int]] = {}
    for s in shards:
        per = counts.setdefault(s["kind"], {})
        split = s["split"] or "all"
        per[split] = per.get(split, 0) + s["n_samples"]
    clips = {key: parts[key]["clip_entry"] for key in sorted(parts)}
    identities = sorted({p["identity"] for p in parts.values()})
    per_split = {s: sorted({i for i in identities if identity_splits.get(i) == s}
                           | {c["identity"] for c in clips.values() if c["split"] == s}) for s in SPLITS}
    audio_s = sum(c["n_audio_samples"] for c in clips.values()) / SAMPLE_RATE
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "sample_rate": SAMPLE_RATE,
        "pack_config": {k: getattr(data_cfg, k) for k in PACK_FIELDS},
        "counts": counts,
        "identities": per_split,
        "identity_splits": {i: identity_splits.get(i, "train") for i in identities},
        "shards": shards,
        "clips": clips,
        "skipped": skipped,
        "totals": {"audio_hours": audio_s / 3600.0, "bytes": sum(s["bytes"] for s in shards),
                   "n_frames": sum(c["n_frames"] for c in clips.values() if "seq_shard" in c),
                   "n_clips": len(clips), "n_identities": len(identities),
                   "n_images": sum(p["counts"]["images"] for p in parts.values())},
        "templates": template_info,
        "ingest": ingest_info,
        "shard_url": shard_url,
    }
    atomic_write_text(out_root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return out_root / MANIFEST
