import torch

from emodifftalk.rig.triplane import Triplane, TriplaneColorField, bbox_from_points


def test_triplane_samples_each_plane_at_its_two_coordinates():
    tp = Triplane(resolution=8, channels=2)
    with torch.no_grad():
        # plane k, channel c holds a linear ramp along the grid x (width) axis: value = u (+10 k)
        ramp = torch.linspace(-1, 1, 8 * 2 + 1)[1::2]  # texel centres with align_corners=False
        for k in range(3):
            tp.planes[k, 0] = ramp[None, :] + 10 * k
            tp.planes[k, 1] = ramp[:, None] + 10 * k  # ramp along the grid y (height) axis
    xyz = torch.tensor([[0.1, -0.3, 0.5], [-0.6, 0.2, 0.0]])
    f = tp(xyz)
    assert f.shape == (2, 6)
    # XY plane: (x, y); XZ plane: (x, z); YZ plane: (y, z)
    want = torch.stack([xyz[:, 0], xyz[:, 1], xyz[:, 0] + 10, xyz[:, 2] + 10, xyz[:, 1] + 20, xyz[:, 2] + 20], 1)
    assert torch.allclose(f, want, atol=1e-5)


def test_color_field_range_gradients_and_bbox():
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]])
    lo, hi = bbox_from_points(pts, margin=0.25)
    assert torch.allclose(lo, torch.tensor([-0.25, -0.5, -1.0])) and torch.allclose(hi, torch.tensor([1.25, 2.5, 5.0]))
    torch.manual_seed(0)
    field = TriplaneColorField(16, 4, 32, lo, hi)
    assert torch.allclose(field.normalise(torch.stack([lo, hi])), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    x = torch.rand(50, 3) * 2
    rgb = field(x)
    assert rgb.shape == (50, 3) and torch.all((rgb > 0) & (rgb < 1))
    rgb.sum().backward()
    assert field.triplane.planes.grad.abs().sum() > 0 and field.mlp[0].weight.grad.abs().sum() > 0
    # points outside the box are clamped to the border, not zeros/NaN
    far = field(torch.tensor([[100.0, 100.0, 100.0]]))
    assert torch.isfinite(far).all()


def test_color_field_can_fit_a_colour_pattern():
    torch.manual_seed(0)
    pts = torch.rand(200, 3) * 2 - 1
    target = torch.sigmoid(torch.stack([3 * pts[:, 0], 3 * pts[:, 1] * pts[:, 2], -2 * pts[:, 2]], 1))
    field = TriplaneColorField(16, 8, 32, torch.full((3,), -1.0), torch.ones(3))
    opt = torch.optim.Adam(field.parameters(), lr=3e-2)
    first = None
    for _ in range(60):
        loss = (field(pts) - target).abs().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first
