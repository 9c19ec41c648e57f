"""Bring-your-own multi-view data (EmoTalk3D or any capture) described by a manifest (YAML/JSON).

The on-disk layout of EmoTalk3D is not public (``docs/formats/emotalk3d.md``), so the
reader never guesses a layout: a manifest says where everything is. Paths are relative to
``root`` (default: the manifest's folder); ``{camera}`` in a glob is replaced by each camera name.

.. code-block:: yaml

    name: emotalk3d                      # data set name in the shard manifest
    root: .                              # optional
    defaults:                            # optional; any sequence key (sequence values win)
      fps: 25                            # source frame rate (required somewhere)
      camera_convention: opencv_w2c_m    # <opencv|opengl>_<w2c|c2w>_<m|cm|mm> (see ingest.cameras)
      pixel_center: 0.5                  # where pixel (0, 0)'s centre is in K (OpenCV calib: 0.0)
      mesh_units: m
      first_frame: 0                     # number of the file that is frame 0 (e.g. 1 for 00001.png)
    subjects:
      "0001":
        template: template.obj           # obj / ply / npy (V, 3); faces from obj/ply
        vertex_sets: sets.json           # optional {"lips": [...], "upper_face", "eyes", "jaw", "face"}
        sequences:
          angry_1:
            frames: "0001/angry_1/images/{camera}/*.png"   # or {A: glob, B: glob}
            masks: "0001/angry_1/masks/{camera}/*.png"     # optional mattes (white = foreground)
            cameras: 0001/angry_1/cams.json                 # camera file
            camera_format: json                            # json | yaml | npz (default: by suffix)
            audio: 0001/angry_1/audio.wav                  # wav/flac/ogg/mp3/m4a/mp4 ..., any rate/channels
            meshes: "0001/angry_1/meshes/*.obj"            # per-frame meshes (obj/ply/npy), or one (T, V, 3) .npy
            openface: 0001/angry_1/openface.csv            # OpenFace 2.x CSV
            emotion: angry
            frontal_camera: A

Frame numbers are the trailing digits of each file's stem (minus ``first_frame``).

Camera files (``json``/``yaml``): ``{"convention": "...", "cameras": {name: {...}}}`` (or a list
of cameras with a ``name``), each with ``K`` (3x3, or ``fx, fy, cx, cy``), one extrinsic matrix
(``w2c``, ``c2w``, ``RT``, ``extrinsic``, ``viewmat``, ``matrix`` or ``transform_matrix``; 4x4 or
3x4; read in the declared convention), optional ``width``/``height`` (else from the first image)
and ``dist`` (OpenCV k1 k2 p1 p2 k3). ``npz``: arrays ``names`` (C,), ``K`` (C,3,3),
``extrinsics`` (C,4,4|3,4), optional ``width``, ``height``. The convention is the manifest's
``camera_convention`` when given, else the file's ``convention``; a conflict is noted.
``emodifftalk check-cameras MANIFEST`` tells whether the declared convention fits the images.
"""

from __future__ import annotations

import glob as globlib
import json
import re
from pathlib import Path

import numpy as np

from emodifftalk.data.audio import read_audio
from emodifftalk.data.schema import validate_name
from emodifftalk.ingest.cameras import UNITS, Convention, check_intrinsics, shift_pixel_center, to_viewmat
from emodifftalk.ingest.clip import ClipDataError, ClipSource, SourceCamera
from emodifftalk.ingest.images import image_size

SEQUENCE_KEYS = ("frames", "masks", "cameras", "camera_format", "camera_convention", "pixel_center", "audio",
                 "meshes", "mesh_units", "openface", "fps", "emotion", "frontal_camera", "first_frame",
                 "channel_order")
MATRIX_KEYS = ("w2c", "c2w", "RT", "extrinsic", "extrinsics", "viewmat", "matrix", "transform_matrix")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


class ManifestError(ValueError):
    """The data manifest is malformed; the message names the key."""


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def load_data_manifest(path: str | Path) -> dict:
    """Parse a YAML/JSON data manifest (not a shard manifest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data manifest not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml / json parse errors
        raise ManifestError(f"{path}: cannot parse ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("subjects"), dict) or not data["subjects"]:
        raise ManifestError(f"{path}: needs a non-empty 'subjects' mapping (subject -> {{sequences: ...}})")
    return data


def _resolve(root: Path, p):
    if p is None:
        return None
    if isinstance(p, dict):
        return {str(k): _resolve(root, v) for k, v in p.items()}
    return str((root / str(p)) if not Path(str(p)).is_absolute() else Path(str(p)))


def plan_folder(manifest_path: str | Path) -> tuple[list[dict], list[dict], str]:
    """(tasks, skipped, data set name) for ``ray_ingest.run_ingest``: one task per sequence."""
    manifest_path = Path(manifest_path).resolve()
    data = load_data_manifest(manifest_path)
    root = (manifest_path.parent / str(data.get("root", "."))).resolve()
    defaults = dict(data.get("defaults") or {})
    unknown = sorted(set(defaults) - set(SEQUENCE_KEYS))
    if unknown:
        raise ManifestError(f"{manifest_path}: unknown key(s) {unknown} under 'defaults' "
                            f"(known: {', '.join(SEQUENCE_KEYS)})")
    tasks, skipped = [], []
    for subject, sub in sorted(data["subjects"].items(), key=lambda kv: str(kv[0])):
        subject = str(subject)
        try:
            validate_name(subject, "identity")
            if not isinstance(sub, dict) or not isinstance(sub.get("sequences"), dict) or not sub["sequences"]:
                raise ManifestError(f"subject {subject!r} needs a non-empty 'sequences' mapping")
        except ValueError as e:
            skipped.append({"identity": subject, "clip": None, "reason": f"{manifest_path}: {e}"})
            continue
        sub_defaults = {k: v for k, v in sub.items() if k in SEQUENCE_KEYS}
        for seq, entry in sorted(sub["sequences"].items(), key=lambda kv: str(kv[0])):
            seq = str(seq)
            try:
                validate_name(seq, "clip")
                entry = dict(entry or {})
                bad = sorted(set(entry) - set(SEQUENCE_KEYS))
                if bad:
                    raise ManifestError(f"unknown key(s) {bad} (known: {', '.join(SEQUENCE_KEYS)})")
                full = {**defaults, **sub_defaults, **entry}
                for k in ("frames", "masks", "cameras", "audio", "meshes", "openface"):
                    full[k] = _resolve(root, full.get(k))
                if full.get("fps") is None:
                    raise ManifestError("no 'fps' (set it per sequence or under 'defaults')")
                if not full.get("frames") and not full.get("audio"):
                    raise ManifestError("needs 'frames' and/or 'audio'")
                if full.get("frames") and not full.get("cameras"):
                    raise ManifestError("'frames' given without a 'cameras' file")
            except ValueError as e:
                skipped.append({"identity": subject, "clip": seq, "reason": f"{manifest_path}: sequence {seq!r}: {e}"})
                continue
            src = {"kind": "folder", "manifest": str(manifest_path), "subject": subject, "sequence": seq,
                   "entry": full, "template": _resolve(root, sub.get("template")),
                   "vertex_sets": _resolve(root, sub.get("vertex_sets"))}
            files = {k: full[k] for k in ("cameras", "audio") if isinstance(full.get(k), str)}
            for k in ("template", "vertex_sets"):
                if src[k]:
                    files[k] = src[k]
            tasks.append({"identity": subject, "clip": seq, "source": src, "files": files,
                          "openface": full.get("openface")})
    return tasks, skipped, str(data.get("name") or manifest_path.parent.name)


# --------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    verts, faces = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            if line.startswith("v "):
                parts = line.split()
                if len(parts) < 4:
                    raise ClipDataError(f"{path}:{ln}: vertex line needs 3 coordinates")
                verts.append([float(x) for x in parts[1:4]])
            elif line.startswith("f "):
                idx = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                faces += [[idx[0], idx[i], idx[i + 1]] for i in range(1, len(idx) - 1)]  # fan
    v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    if not faces:
        return v, None
    fa = np.asarray(faces, dtype=np.int64)
    fa = np.where(fa < 0, fa + len(v), fa - 1)  # 1-based; negative = relative
    return v, fa.astype(np.int32)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertices (x, y, z) and triangle faces of an ASCII or binary PLY (other properties skipped)."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ClipDataError(f"{path}: not a PLY file")
        fmt, elements = None, []
        while True:
            line = f.readline()
            if not line:
                raise ClipDataError(f"{path}: PLY header has no end_header")
            tok = line.decode("ascii", "replace").split()
            if not tok or tok[0] in ("comment", "obj_info"):
                continue
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                elements.append({"name": tok[1], "count": int(tok[2]), "props": []})
            elif tok[0] == "property":
                if tok[1] == "list":
                    elements[-1]["props"].append((tok[4], "list", _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
                else:
                    elements[-1]["props"].append((tok[2], _PLY_TYPES[tok[1]], None, None))
            elif tok[0] == "end_header":
                break
        if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
            raise ClipDataError(f"{path}: unsupported PLY format {fmt}")
        endian = "<" if fmt == "binary_little_endian" else ">"
        verts = faces = None
        for el in elements:
            if fmt == "ascii":
                rows = [f.readline().split() for _ in range(el["count"])]
                if el["name"] == "vertex":
                    names = [p[0] for p in el["props"]]
                    arr = np.asarray(rows, dtype=np.float64)
                    verts = arr[:, [names.index(c) for c in "xyz"]]
                elif el["name"] == "face":
                    faces = [[int(x) for x in r[1:1 + int(r[0])]] for r in rows]
                continue
            if all(p[1] != "list" for p in el["props"]):
                dt = np.dtype([(p[0], endian + p[1]) for p in el["props"]])
                arr = np.frombuffer(f.read(dt.itemsize * el["count"]), dtype=dt, count=el["count"])
                if el["name"] == "vertex":
                    verts = np.stack([arr[c].astype(np.float64) for c in "xyz"], axis=1)
                continue
            rows = []
            for _ in range(el["count"]):
                row = []
                for _name, kind, ctype, itype in el["props"]:
                    if kind == "list":
                        (n,) = np.frombuffer(f.read(np.dtype(ctype).itemsize), endian + ctype)
                        row = list(np.frombuffer(f.read(np.dtype(itype).itemsize * int(n)), endian + itype))
                    else:
                        f.read(np.dtype(kind).itemsize)
                rows.append(row)
            if el["name"] == "face":
                faces = rows
    if verts is None:
        raise ClipDataError(f"{path}: PLY has no vertex element with x, y, z")
    if not faces:
        return verts, None
    tris = [[r[0], r[i], r[i + 1]] for r in faces for i in range(1, len(r) - 1)]
    return verts, np.asarray(tris, dtype=np.int32).reshape(-1, 3)


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(verts (V, 3) float64, faces (F, 3) int32 | None) of an .obj / .ply / .npy file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    if suffix == ".obj":
        v, f = read_obj(path)
    elif suffix == ".ply":
        v, f = read_ply(path)
    elif suffix == ".npy":
        v, f = np.load(path, allow_pickle=False), None
    else:
        raise ClipDataError(f"{path}: unsupported mesh format {suffix} (use .obj, .ply or .npy)")
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ClipDataError(f"{path}: expected (V, 3) vertices, got {v.shape}")
    if f is not None and f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ClipDataError(f"{path}: face indices outside [0, {len(v)})")
    return v, f


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


def _k_of(cam: dict, where: str) -> np.ndarray:
    if "K" in cam:
        return check_intrinsics(cam["K"], where)
    if all(k in cam for k in ("fx", "fy", "cx", "cy")):
        return check_intrinsics([[cam["fx"], 0, cam["cx"]], [0, cam["fy"], cam["cy"]], [0, 0, 1]], where)
    raise ClipDataError(f"{where}: needs 'K' or fx, fy, cx, cy")


def read_camera_file(path: str | Path, fmt: str | None = None) -> tuple[dict[str, dict], str | None]:
    """({name: {"K", "matrix", "matrix_key", "width", "height", "dist"}}, the file's convention)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path}")
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            ks, ext = z["K"], z["extrinsics"]
            w, h = z.get("width"), z.get("height")
            conv = str(z["convention"]) if "convention" in z else None
        cams = {n: {"K": check_intrinsics(ks[i], f"{path} camera {n}"), "matrix": np.asarray(ext[i], float),
                    "matrix_key": "extrinsics",
                    "width": None if w is None else int(np.ravel(w)[i if np.size(w) > 1 else 0]),
                    "height": None if h is None else int(np.ravel(h)[i if np.size(h) > 1 else 0]), "dist": None}
                for i, n in enumerate(names)}
        return cams, conv
    if fmt not in ("json", "yaml", "yml"):
        raise ClipDataError(f"{path}: unknown camera file format {fmt!r} (json, yaml or npz)")
    try:
        if fmt == "json":
            data = json.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text())
    except Exception as e:
        raise ClipDataError(f"{path}: cannot parse camera file ({e})") from e
    conv = data.get("convention") if isinstance(data, dict) else None
    raw = data.get("cameras", data) if isinstance(data, dict) else data
    if isinstance(raw, list):
        raw = {str(c.get("name")): c for c in raw}
    if not isinstance(raw, dict) or not raw:
        raise ClipDataError(f"{path}: no cameras (expected 'cameras': {{name: {{K, w2c|c2w|..., width, height}}}})")
    cams = {}
    for name, c in raw.items():
        if name in ("convention",) or not isinstance(c, dict):
            continue
        where = f"{path} camera {name}"
        keys = [k for k in MATRIX_KEYS if k in c]
        if not keys:
            raise ClipDataError(f"{where}: no extrinsic matrix (one of {', '.join(MATRIX_KEYS)})")
        dist = c.get("dist", c.get("D"))
        cams[str(name)] = {"K": _k_of(c, where), "matrix": np.asarray(c[keys[0]], float), "matrix_key": keys[0],
                           "width": c.get("width"), "height": c.get("height"),
                           "dist": None if dist is None else np.asarray(dist, float)}
    return cams, conv


# --------------------------------------------------------------------------------------------
# One sequence
# --------------------------------------------------------------------------------------------


def _frame_number(path: str, first: int) -> int | None:
    m = _TRAILING_DIGITS.search(Path(path).stem)
    return None if m is None else int(m.group(1)) - first


def _glob_frames(pattern: str, first: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for p in sorted(globlib.glob(pattern)):
        n = _frame_number(p, first)
        if n is not None and n >= 0:
            out.setdefault(n, p)
    return out


class FolderClip(ClipSource):
    """One sequence of a folder manifest (see the module docstring)."""

    dataset = "folder"

    def __init__(self, src: dict):
        super().__init__()
        e = src["entry"]
        self.src, self.entry = src, e
        self.identity, self.clip = src["subject"], src["sequence"]
        self.emotion = e.get("emotion")
        self.source_fps = float(e["fps"])
        self.frontal_camera = e.get("frontal_camera")
        self.channel_order = e.get("channel_order", "rgb")
        self.first = int(e.get("first_frame", 0))
        self.mesh_scale = UNITS[str(e.get("mesh_units", "m"))]
        self.dataset = src.get("dataset", "folder")
        self._cams: dict[str, SourceCamera] = {}
        self._images: dict[str, dict[int, str]] = {}
        self._masks: dict[str, dict[int, str]] = {}
        self._meshes: dict[int, str] = {}
        self._mesh_array = None
        if e.get("cameras"):
            self._load_cameras()
        if e.get("frames"):
            self._images = self._per_camera(e["frames"], "frames")
            unknown = sorted(set(self._images) - set(self._cams))
            if unknown:
                raise ClipDataError(f"{self.identity}/{self.clip}: frames of camera(s) {unknown} are not in "
                                    f"{e['cameras']}")
            empty = sorted(c for c in self._cams if not self._images.get(c))
            if empty:
                self.note(f"camera(s) {', '.join(empty)} have no frames matching {e['frames']}")
            if not any(self._images.values()):
                raise ClipDataError(f"{self.identity}/{self.clip}: no image matches {e['frames']}")
        if e.get("masks"):
            self._masks = self._per_camera(e["masks"], "masks")
        if e.get("meshes"):
            self._load_meshes(e["meshes"])

    @classmethod
    def from_task(cls, src: dict) -> FolderClip:
        return cls(src)

    # -- setup ----------------------------------------------------------------------------
    def _convention(self, file_conv: str | None) -> Convention:
        declared = self.entry.get("camera_convention")
        if declared and file_conv and Convention.parse(declared) != Convention.parse(file_conv):
            self.note(f"manifest declares camera_convention={declared} but {self.entry['cameras']} says "
                      f"{file_conv}; using the manifest's")
        spec = declared or file_conv
        if not spec:
            raise ClipDataError(f"{self.identity}/{self.clip}: no camera convention (set camera_convention in the "
                                f"manifest or 'convention' in {self.entry['cameras']})")
        return Convention.parse(spec)

    def _load_cameras(self) -> None:
        raw, file_conv = read_camera_file(self.entry["cameras"], self.entry.get("camera_format"))
        conv = self._convention(file_conv)
        self.convention = conv
        pixel_center = float(self.entry.get("pixel_center", 0.5))
        lower = [n.lower() for n in raw]
        if len(set(lower)) != len(lower):  # tar member extensions are matched case-insensitively
            raise ClipDataError(f"{self.entry['cameras']}: camera names {sorted(raw)} collide when lower-cased")
        odd = []
        for name, c in sorted(raw.items()):
            validate_name(name, "camera")
            where = f"{self.entry['cameras']} camera {name}"
            key_dir = {"w2c": "w2c", "viewmat": "w2c", "c2w": "c2w", "transform_matrix": "c2w"}.get(c["matrix_key"])
            if key_dir and key_dir != conv.direction:
                odd.append(f"{name} ('{c['matrix_key']}')")
            self._cams[name] = SourceCamera(name, shift_pixel_center(c["K"], pixel_center),
                                            to_viewmat(c["matrix"], conv, where), c["width"] or 0, c["height"] or 0,
                                            c["dist"])
        if odd:
            self.note(f"{self.entry['cameras']}: matrix key(s) of camera(s) {', '.join(odd)} suggest another "
                      f"direction than the convention {conv}; run `emodifftalk check-cameras`")

    def _per_camera(self, spec, what: str) -> dict[str, dict[int, str]]:
        if isinstance(spec, dict):
            pats = {str(c): p for c, p in spec.items()}
        elif "{camera}" in str(spec):
            pats = {c: str(spec).replace("{camera}", c) for c in self._cams}
        else:
            raise ClipDataError(f"{self.identity}/{self.clip}: '{what}' must map camera -> glob or contain "
                                f"'{{camera}}', got {spec!r}")
        return {c: _glob_frames(p, self.first) for c, p in pats.items()}

    def _load_meshes(self, spec: str) -> None:
        if not any(ch in spec for ch in "*?[") and spec.endswith(".npy") and Path(spec).is_file():
            arr = np.load(spec, mmap_mode="r", allow_pickle=False)
            if arr.ndim == 3 and arr.shape[2] == 3:
                self._mesh_array = arr
                self._meshes = {i: spec for i in range(arr.shape[0])}
                return
        self._meshes = _glob_frames(spec, self.first)
        if not self._meshes:
            self.note(f"no mesh file matches {spec}")

    # -- ClipSource -------------------------------------------------------------------------
    def camera_names(self) -> list[str]:
        return sorted(c for c, frames in self._images.items() if frames)

    def camera(self, name: str) -> SourceCamera:
        cam = self._cams[name]
        if not cam.width or not cam.height:
            first = self._images[name][min(self._images[name])]
            w, h = image_size(Path(first), first)
            cam = self._cams[name] = SourceCamera(cam.name, cam.K, cam.viewmat, w, h, cam.dist)
        return cam

    def frame_ids(self, name: str) -> list[int]:
        return sorted(self._images.get(name, {}))

    def n_source_frames(self) -> int:
        last = max([max(v, default=-1) for v in self._images.values()] + [max(self._meshes, default=-1)])
        if last < 0:
            a = self.audio()
            if a is None:
                raise ClipDataError(f"{self.identity}/{self.clip}: no frames, meshes or audio")
            return max(1, int(len(a[0]) / a[1] * self.source_fps))
        return last + 1

    def image_data(self, name: str, fid: int) -> Path:
        return Path(self._images[name][fid])

    def mask_data(self, name: str, fid: int):
        p = self._masks.get(name, {}).get(fid)
        return None if p is None else Path(p)

    def has_audio(self) -> bool:
        return bool(self.entry.get("audio")) and Path(self.entry["audio"]).is_file()

    def audio(self) -> tuple[np.ndarray, int] | None:
        path = self.entry.get("audio")
        if not path:
            return None
        if not Path(path).is_file():
            self.note(f"audio file {path} not found: no audio")
            return None
        return read_audio(path)

    def verts_frame_ids(self) -> list[int]:
        return sorted(self._meshes)

    def verts(self, fid: int) -> np.ndarray | None:
        if fid not in self._meshes:
            return None
        if self._mesh_array is not None:
            v = np.asarray(self._mesh_array[fid], dtype=np.float64)
        else:
            v, _ = read_mesh(self._meshes[fid])
        return (v * self.mesh_scale).astype(np.float32)

    def template(self) -> dict | None:
        sets = None
        if self.src.get("vertex_sets"):
            sets = json.loads(Path(self.src["vertex_sets"]).read_text())
        if self.src.get("template"):
            v, f = read_mesh(self.src["template"])
            return {"verts": (v * self.mesh_scale).astype(np.float32), "faces": f, "vertex_sets": sets,
                    "priority": [-1], "source": f"template file {self.src['template']}"}
        ids = self.verts_frame_ids()
        if not ids:
            return None
        faces = None
        if self._mesh_array is None:
            _, faces = read_mesh(self._meshes[ids[0]])
        return {"verts": self.verts(ids[0]), "faces": faces, "vertex_sets": sets, "priority": [1, self.clip],
                "frame": ids[0], "source": f"first mesh of {self.clip} ({Path(self._meshes[ids[0]]).name})"}
