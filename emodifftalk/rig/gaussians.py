"""The canonical Gaussian rig G0 of one identity (paper supp. §1, eq. 4–5) and its files.

G0 = {μ0, S0, R0, α0, c0}: positions, log-scales, unit quaternions (wxyz), opacity logits and
baked RGB colours (the triplane that produced them is discarded, eq. 3). Layout of the N points:

* the first ``n_bound`` (= V, the template vertex count) are **bound** Gaussians, one per
  template vertex in vertex order: their position is the mesh vertex, always;
* the remaining ``n_free`` are **free** Gaussians (hair, shoulders, ...): learned positions, and
  at animation time they follow the mesh through their binding (``emodifftalk.rig.binding``).

``facial_idx`` (Q,) lists the bound Gaussians whose opacity the feature line changes
(F ∈ R^{17×Q×16}); see ``emodifftalk.rig.deform`` for the choice of Q.

On disk a rig is a directory written atomically (temp dir + rename)::

    rig.safetensors   tensors (names below)
    rig.json          identity, counts, template vertex count, rig config, metrics
    [preview.png, triplane.safetensors]   optional extras from reconstruction
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emodifftalk.safetensors_io import load_tensors
from emodifftalk.utils import atomic_dir, umask

RIG_TENSORS = "rig.safetensors"
RIG_JSON = "rig.json"
RIG_FORMAT_VERSION = 1

# tensor name in rig.safetensors -> GaussianRig attribute
_TENSOR_FIELDS = (
    "means", "log_scales", "quats", "opacity_logits", "colors", "facial_idx", "faces",
    "vertex_nbr_idx", "vertex_nbr_w", "free_anchor_idx", "free_anchor_w",
)


@dataclass
class Gaussians:
    """Activated Gaussians ready for ``emodifftalk.render.rasterize``.

    ``means``/``quats`` (N, 3)/(N, 4) for one moment or (T, N, 3)/(T, N, 4) for a sequence;
    ``scales`` (N, 3) linear, ``opacities`` (N,) or (T, N) in [0, 1], ``colors`` (N, 3) RGB.
    A field without the leading T is shared by all frames.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor

    @property
    def num_frames(self) -> int | None:
        """T for a sequence, None for a single moment."""
        return self.means.shape[0] if self.means.dim() == 3 else None

    def frame(self, t: int) -> Gaussians:
        """The Gaussians of frame ``t`` (all fields without the leading T)."""

        def pick(x: torch.Tensor, per_point_dims: int) -> torch.Tensor:
            return x[t] if x.dim() == per_point_dims + 1 else x

        if self.num_frames is None:
            return self
        return Gaussians(pick(self.means, 2), pick(self.quats, 2), pick(self.scales, 2),
                         pick(self.opacities, 1), pick(self.colors, 2))

    def render_args(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``rasterize`` of a single moment."""
        if self.num_frames is not None:
            raise ValueError("render_args() needs a single moment; call .frame(t) first")
        return {"means": self.means, "quats": self.quats, "scales": self.scales,
                "opacities": self.opacities, "colors": self.colors}


@dataclass
class GaussianRig:
    """Canonical rig G0 of one identity (see the module docstring for the point layout).

    Shapes (N = n_bound + n_free, V = n_bound, Q = len(facial_idx), K* = binding widths):
    ``means`` (N,3), ``log_scales`` (N,3), ``quats`` (N,4) wxyz, ``opacity_logits`` (N,),
    ``colors`` (N,3) in [0,1], ``facial_idx`` (Q,) long, ``faces`` (F,3) long (template),
    ``vertex_nbr_idx``/``vertex_nbr_w`` (V,Kv) one-ring of each vertex (rotation estimate),
    ``free_anchor_idx``/``free_anchor_w`` (n_free,Kf) template vertices each free point follows.
    """

    identity: str
    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    colors: torch.Tensor
    n_bound: int
    facial_idx: torch.Tensor
    faces: torch.Tensor
    vertex_nbr_idx: torch.Tensor
    vertex_nbr_w: torch.Tensor
    free_anchor_idx: torch.Tensor
    free_anchor_w: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # config, metrics, provenance (rig.json)

    def __post_init__(self) -> None:
        self.check()

    # --- derived -----------------------------------------------------------------------------
    @property
    def n_points(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_free(self) -> int:
        return self.n_points - self.n_bound

    @property
    def n_facial(self) -> int:
        return int(self.facial_idx.shape[0])

    @property
    def scales(self) -> torch.Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def canonical_verts(self) -> torch.Tensor:
        """(V, 3) the mesh of the neutral moment: the bound Gaussians' positions."""
        return self.means[: self.n_bound]

    def canonical(self) -> Gaussians:
        """G0 itself, activated, for rendering the neutral moment."""
        return Gaussians(self.means, torch.nn.functional.normalize(self.quats, dim=-1), self.scales,
                         self.opacities, self.colors)

    def to(self, device: str | torch.device) -> GaussianRig:
        kw = {name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}
        return GaussianRig(identity=self.identity, n_bound=self.n_bound, info=self.info, **kw)

    def check(self) -> None:
        """Assert the shape contract; raise ValueError naming the bad tensor."""
        n, v = self.n_points, self.n_bound
        expect = {
            "means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,),
            "colors": (n, 3), "vertex_nbr_idx": (v, None), "vertex_nbr_w": (v, None),
            "free_anchor_idx": (n - v, None), "free_anchor_w": (n - v, None), "faces": (None, 3),
            "facial_idx": (None,),
        }
        if not 0 < v <= n:
            raise ValueError(f"rig {self.identity!r}: n_bound={v} must be in [1, N={n}]")
        for name, shape in expect.items():
            t = getattr(self, name)
            ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
            if not ok:
                raise ValueError(f"rig {self.identity!r}: {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple('*' if s is None else s for s in shape)}")
        if self.vertex_nbr_idx.shape != self.vertex_nbr_w.shape:
            raise ValueError("rig: vertex_nbr_idx and vertex_nbr_w shapes differ")
        if self.free_anchor_idx.shape != self.free_anchor_w.shape:
            raise ValueError("rig: free_anchor_idx and free_anchor_w shapes differ")
        if self.facial_idx.numel() and (int(self.facial_idx.min()) < 0 or int(self.facial_idx.max()) >= v):
            raise ValueError(f"rig: facial_idx must index bound Gaussians [0, {v})")

    # --- files -------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, *, overwrite: bool = False,
             extra_files: dict[str, bytes] | None = None) -> Path:
        """Write the rig directory atomically; ``extra_files`` (name -> bytes) go in with it."""
        from safetensors.torch import save_file

        self.check()
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSOR_FIELDS}
        meta = {
            "format_version": RIG_FORMAT_VERSION,
            "identity": self.identity,
            "n_vertices": self.n_bound,
            "n_bound": self.n_bound,
            "n_free": self.n_free,
            "n_facial": self.n_facial,
            **{k: v for k, v in self.info.items() if k not in ("format_version", "identity")},
        }
        out = Path(out_dir)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / RIG_TENSORS), metadata={"identity": self.identity})
            (tmp / RIG_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_jsonable))
            for name, data in (extra_files or {}).items():
                if "/" in name or name in (RIG_TENSORS, RIG_JSON):
                    raise ValueError(f"extra rig file name {name!r} is not allowed")
                (tmp / name).write_bytes(data)
            for f in tmp.iterdir():
                os.chmod(f, 0o666 & ~umask())
        return out

    @classmethod
    def load(cls, rig_dir: str | Path, device: str | torch.device = "cpu") -> GaussianRig:
        rig_dir = Path(rig_dir)
        if not is_complete(rig_dir):
            raise FileNotFoundError(f"{rig_dir} is not a complete rig directory "
                                    f"(needs {RIG_TENSORS} and {RIG_JSON}); run `emodifftalk rig`")
        meta = json.loads((rig_dir / RIG_JSON).read_text())
        if meta.get("format_version") != RIG_FORMAT_VERSION:
            raise ValueError(f"{rig_dir / RIG_JSON}: rig format_version {meta.get('format_version')} "
                             f"is not supported (expected {RIG_FORMAT_VERSION})")
        tensors = load_tensors(rig_dir / RIG_TENSORS, device=device)
        missing = [n for n in _TENSOR_FIELDS if n not in tensors]
        if missing:
            raise ValueError(f"{rig_dir / RIG_TENSORS} lacks tensors {missing}")
        info = {k: v for k, v in meta.items()
                if k not in ("format_version", "identity", "n_vertices", "n_bound", "n_free", "n_facial")}
        return cls(identity=meta["identity"], n_bound=int(meta["n_bound"]), info=info,
                   **{n: tensors[n] for n in _TENSOR_FIELDS})


def is_complete(rig_dir: str | Path) -> bool:
    """True when ``rig_dir`` holds a finished rig (written atomically, so both files = done)."""
    rig_dir = Path(rig_dir)
    if not ((rig_dir / RIG_TENSORS).is_file() and (rig_dir / RIG_JSON).is_file()):
        return False
    try:
        meta = json.loads((rig_dir / RIG_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format_version") == RIG_FORMAT_VERSION


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to rig.json")
