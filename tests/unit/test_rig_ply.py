import numpy as np
import pytest
import torch

from emodifftalk.rig.ply import (
    PROPERTIES,
    SH_C0,
    encode_ply,
    ply_to_params,
    read_ply,
    write_ply,
)


def _params(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    return {"means": torch.randn(n, 3, generator=g), "log_scales": torch.randn(n, 3, generator=g) - 4,
            "quats": q, "opacity_logits": torch.randn(n, generator=g), "colors": torch.rand(n, 3, generator=g)}


def test_ply_round_trip(tmp_path):
    p = _params()
    path = write_ply(tmp_path / "g.ply", **p)
    cols = read_ply(path)
    assert list(cols) == list(PROPERTIES) and len(PROPERTIES) == 62
    back = ply_to_params(cols)
    for k, v in p.items():
        np.testing.assert_allclose(back[k], v.numpy(), rtol=1e-6, atol=1e-6, err_msg=k)
    assert np.all(cols["nx"] == 0) and np.all(cols["f_rest_44"] == 0)
    # colour is stored as the SH DC coefficient (c - 0.5) / C0
    np.testing.assert_allclose(cols["f_dc_1"], (p["colors"][:, 1].numpy() - 0.5) / SH_C0, rtol=1e-6)


def test_ply_header_is_standard_3dgs(tmp_path):
    data = encode_ply(**_params(3))
    header = data[: data.index(b"end_header\n")].decode()
    assert header.startswith("ply\nformat binary_little_endian 1.0\nelement vertex 3\n")
    assert "property float f_rest_44\nproperty float opacity\nproperty float scale_0" in header
    assert header.rstrip().endswith("property float rot_3")
    assert len(data) - data.index(b"end_header\n") - len(b"end_header\n") == 3 * 62 * 4


def test_read_ply_rejects_truncated_and_ascii(tmp_path):
    data = encode_ply(**_params(4))
    (tmp_path / "cut.ply").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(tmp_path / "cut.ply")
    (tmp_path / "a.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="binary"):
        read_ply(tmp_path / "a.ply")


def test_read_ply_big_endian_and_other_types(tmp_path):
    arr = np.array([(1.5, 7), (-2.0, 9)], dtype=[("x", ">f8"), ("red", "u1")])
    head = b"ply\nformat binary_big_endian 1.0\ncomment hi\nelement vertex 2\nproperty double x\nproperty uchar red\nend_header\n"
    (tmp_path / "be.ply").write_bytes(head + arr.tobytes())
    cols = read_ply(tmp_path / "be.ply")
    np.testing.assert_array_equal(cols["x"], [1.5, -2.0])
    np.testing.assert_array_equal(cols["red"], [7, 9])


def test_rig_export(tmp_path):
    from test_rig_gaussians import make_rig

    from emodifftalk.rig.ply import rig_to_ply, write_gaussians_ply

    rig = make_rig()
    cols = read_ply(rig_to_ply(rig, tmp_path / "rig.ply"))
    np.testing.assert_allclose(cols["opacity"], rig.opacity_logits.numpy(), rtol=1e-6)
    g = rig.canonical()
    cols2 = read_ply(write_gaussians_ply(tmp_path / "g.ply", g))
    np.testing.assert_allclose(cols2["scale_2"], rig.log_scales[:, 2].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cols2["opacity"], rig.opacity_logits.numpy(), rtol=1e-4, atol=1e-4)
