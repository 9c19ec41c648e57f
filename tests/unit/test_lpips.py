"""LPIPS from local weights (eval/lpips.py): loading, errors, and that it measures distance.

Its outputs equal the lpips package's LPIPS(net="alex") for the same weights (checked once by
hand against lpips 0.1.4 with a random backbone and the package's v0.1 heads: max |Δ| 0.0);
the package is not a dependency, so the test checks the properties instead."""

import pytest
import torch
from safetensors.torch import save_file

from emodifftalk.cli import main
from emodifftalk.eval.lpips import CHANNELS, LPIPSError, alexnet_features, load_lpips


def _weights(tmp_path):
    """Random AlexNet (torchvision key names) and heads (lpips key names) in two files."""
    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in alexnet_features().state_dict().items()}
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(CHANNELS)}
    save_file(backbone, str(tmp_path / "alexnet.safetensors"))
    torch.save(heads, tmp_path / "alex.pth")
    return f"{tmp_path / 'alexnet.safetensors'},{tmp_path / 'alex.pth'}"


def test_lpips_is_zero_on_equal_images_and_grows_with_the_difference(tmp_path):
    net = load_lpips(_weights(tmp_path))
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 48, 48, 3, generator=gen)
    noise = torch.randn(1, 48, 48, 3, generator=gen)
    d = [float(net(a, (a + s * noise).clamp(0, 1))) for s in (0.0, 0.05, 0.2)]
    assert d[0] == pytest.approx(0.0, abs=1e-7) and 0 < d[1] < d[2]
    b = (a + 0.1 * noise).clamp(0, 1)
    assert float(net(a, b)) == pytest.approx(float(net(b, a)), rel=1e-5)
    with pytest.raises(LPIPSError, match="at least 32 px"):
        net(a[:, :24, :24], a[:, :24, :24])


def test_lpips_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(LPIPSError, match="no such LPIPS weights file"):
        load_lpips(str(tmp_path / "missing.pth"))
    spec = _weights(tmp_path)
    with pytest.raises(LPIPSError, match=r"lack 5 tensors.*lin0\.model\.1\.weight"):
        load_lpips(spec.split(",")[0])  # the backbone alone
    with pytest.raises(SystemExit, match="no such LPIPS weights file"):  # before any rendering
        main(["eval", "rig", str(tmp_path / "rig"), "--data", str(tmp_path), f"eval.lpips_weights={tmp_path}/x.pth"])
