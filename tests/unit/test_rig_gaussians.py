import json
import os

import pytest
import torch

from emodifftalk.rig.binding import bind_free_points, vertex_one_ring
from emodifftalk.rig.gaussians import RIG_JSON, RIG_TENSORS, GaussianRig, is_complete
from emodifftalk.rig.toy import uv_sphere


def make_rig(n_free=20, seed=0, identity="id0") -> GaussianRig:
    """A small rig on a UV sphere with random attributes and a real binding."""
    verts, faces = uv_sphere(6, 8, 0.1)
    verts, faces = torch.from_numpy(verts), torch.from_numpy(faces).long()
    g = torch.Generator().manual_seed(seed)
    v = verts.shape[0]
    free = torch.nn.functional.normalize(torch.randn(n_free, 3, generator=g), dim=-1) * 0.13
    n = v + n_free
    nbr_idx, nbr_w = vertex_one_ring(faces, v)
    a_idx, a_w = bind_free_points(free, verts, k=4)
    return GaussianRig(
        identity=identity, means=torch.cat([verts, free]), log_scales=torch.randn(n, 3, generator=g) - 4,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        opacity_logits=torch.randn(n, generator=g), colors=torch.rand(n, 3, generator=g), n_bound=v,
        facial_idx=torch.nonzero(verts[:, 2] > 0.03).squeeze(1), faces=faces, vertex_nbr_idx=nbr_idx,
        vertex_nbr_w=nbr_w, free_anchor_idx=a_idx, free_anchor_w=a_w,
        info={"metrics": {"psnr_holdout": 30.5}})


def test_counts_and_activations():
    rig = make_rig(n_free=20)
    assert rig.n_bound == 2 + 5 * 8 and rig.n_free == 20 and rig.n_points == rig.n_bound + 20
    assert 0 < rig.n_facial < rig.n_bound
    assert torch.allclose(rig.scales, rig.log_scales.exp())
    assert torch.all((rig.opacities > 0) & (rig.opacities < 1))
    assert torch.equal(rig.canonical_verts, rig.means[: rig.n_bound])


def test_save_load_round_trip(tmp_path):
    rig = make_rig()
    out = rig.save(tmp_path / "rig_a", extra_files={"preview.png": b"\x89PNG"})
    assert is_complete(out)
    assert (out / "preview.png").read_bytes() == b"\x89PNG"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's 0700
    meta = json.loads((out / RIG_JSON).read_text())
    assert meta["identity"] == "id0" and meta["n_vertices"] == rig.n_bound and meta["n_free"] == 20
    assert meta["metrics"]["psnr_holdout"] == 30.5
    back = GaussianRig.load(out)
    assert back.identity == "id0" and back.n_bound == rig.n_bound
    for name in ("means", "log_scales", "quats", "opacity_logits", "colors", "facial_idx", "free_anchor_idx"):
        assert torch.equal(getattr(back, name), getattr(rig, name)), name
    assert back.info["metrics"] == {"psnr_holdout": 30.5}


def test_save_refuses_to_overwrite_and_failed_save_leaves_nothing(tmp_path):
    rig = make_rig()
    rig.save(tmp_path / "r")
    with pytest.raises(FileExistsError):
        rig.save(tmp_path / "r")
    rig.save(tmp_path / "r", overwrite=True)
    # a save that dies half-way (bad extra file name) leaves neither the rig nor temp folders
    with pytest.raises(ValueError):
        rig.save(tmp_path / "s", extra_files={"../evil": b"x"})
    assert not (tmp_path / "s").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_is_complete_and_load_errors(tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    (d / RIG_TENSORS).write_bytes(b"")
    assert not is_complete(d)
    (d / RIG_JSON).write_text("{not json")
    assert not is_complete(d)
    with pytest.raises(FileNotFoundError, match="not a complete rig"):
        GaussianRig.load(d)
    assert not is_complete(tmp_path / "missing")


def test_shape_check_names_the_tensor():
    rig = make_rig()
    with pytest.raises(ValueError, match="colors"):
        GaussianRig(identity="x", means=rig.means, log_scales=rig.log_scales, quats=rig.quats,
                    opacity_logits=rig.opacity_logits, colors=rig.colors[:-1], n_bound=rig.n_bound,
                    facial_idx=rig.facial_idx, faces=rig.faces, vertex_nbr_idx=rig.vertex_nbr_idx,
                    vertex_nbr_w=rig.vertex_nbr_w, free_anchor_idx=rig.free_anchor_idx,
                    free_anchor_w=rig.free_anchor_w)
    with pytest.raises(ValueError, match="facial_idx"):
        GaussianRig(identity="x", means=rig.means, log_scales=rig.log_scales, quats=rig.quats,
                    opacity_logits=rig.opacity_logits, colors=rig.colors, n_bound=rig.n_bound,
                    facial_idx=torch.tensor([rig.n_bound]), faces=rig.faces, vertex_nbr_idx=rig.vertex_nbr_idx,
                    vertex_nbr_w=rig.vertex_nbr_w, free_anchor_idx=rig.free_anchor_idx,
                    free_anchor_w=rig.free_anchor_w)
