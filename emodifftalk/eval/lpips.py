"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) from weights on local disk, never downloaded.

``load_lpips("a.pth,b.pth")`` builds the network and loads every listed file (``.pth``/``.pt``
torch state dicts or ``.safetensors``), merged into one state dict that must hold:

* the AlexNet backbone in torchvision's key names, ``features.{0,3,6,8,10}.{weight,bias}``
  (e.g. torchvision's ``alexnet-owt-7be5be79.pth``; its ``classifier.*`` keys are ignored);
* the five linear heads in the ``lpips`` package's key names, ``lin{0..4}.model.1.weight``
  (its ``lpips/weights/v0.1/alex.pth``).

The distance: inputs in [0, 1] → [-1, 1] → the package's fixed scaling layer → AlexNet's five
ReLU outputs, each unit-normalised over channels → squared differences weighted by the linear
heads, averaged over pixels and summed over layers (the package's ``LPIPS(net="alex")`` with
``spatial=False``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SHIFT = (-0.030, -0.088, -0.188)  # lpips ScalingLayer
SCALE = (0.458, 0.448, 0.450)
SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # AlexNet features up to relu1 ... relu5
MIN_SIZE = 32  # smaller images vanish in AlexNet's pooling before relu3
CHANNELS = (64, 192, 384, 256, 256)


class LPIPSError(ValueError):
    """The LPIPS weights cannot be used; the message names the file or the missing keys."""


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` up to relu5 (same layer indices, so its checkpoint's
    ``features.*`` keys load), without building the 58M-parameter classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True))


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        outs = []
        for lo, hi in SLICES:
            for k in range(lo, hi):
                x = self.features[k](x)
            outs.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return outs

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N,) distances of images ``a``, ``b`` (N, H, W, 3) in [0, 1] (channel last, as rendered)."""
        if min(a.shape[1:3]) < MIN_SIZE:
            raise LPIPSError(f"LPIPS needs images of at least {MIN_SIZE} px, got {tuple(a.shape[1:3])}")
        fa, fb = self._layers(a.permute(0, 3, 1, 2)), self._layers(b.permute(0, 3, 1, 2))
        return sum(lin((x - y) ** 2).mean((1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb))

    def load_package_state(self, state: dict[str, torch.Tensor]) -> None:
        """Backbone + heads from torchvision / ``lpips`` key names (see the module docstring)."""
        want = {f"features.{i}.{p}": f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
        want.update({f"lin{k}.model.1.weight": f"lins.{k}.weight" for k in range(len(CHANNELS))})
        missing = sorted(k for k in want if k not in state)
        if missing:
            raise LPIPSError(f"LPIPS weights lack {len(missing)} tensors, e.g. {missing[:4]}: give torchvision's "
                             "AlexNet (features.*) and the lpips package's v0.1 alex.pth (lin*.model.1.weight)")
        ours = self.state_dict()
        for src, dst in want.items():
            if tuple(state[src].shape) != tuple(ours[dst].shape):
                raise LPIPSError(f"LPIPS weight {src} has shape {tuple(state[src].shape)}, "
                                 f"expected {tuple(ours[dst].shape)}")
        self.load_state_dict({**ours, **{dst: state[src].float() for src, dst in want.items()}})


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LPIPSError(f"{path}: no such LPIPS weights file (eval.lpips_weights; nothing is downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise LPIPSError(f"{path}: not a state dict")
    return state


def check_lpips_weights(spec: str) -> list[Path]:
    """The files of ``spec`` (comma-separated paths); LPIPSError if one is missing."""
    paths = [Path(p.strip()).expanduser() for p in spec.split(",") if p.strip()]
    for p in paths:
        if not p.is_file():
            raise LPIPSError(f"{p}: no such LPIPS weights file (eval.lpips_weights; nothing is downloaded)")
    return paths


def load_lpips(spec: str, device: str | torch.device = "cpu") -> LPIPS:
    """The LPIPS network with the weights of ``spec`` (comma-separated files, merged)."""
    state: dict[str, torch.Tensor] = {}
    for p in check_lpips_weights(spec):
        state.update(_read_state(p))
    net = LPIPS()
    net.load_package_state(state)
    return net.eval().to(device)
