import math

import pytest
import torch
from torch.nn import functional as F

from emodifftalk.config import Text2AUConfig
from emodifftalk.text2au.losses import focal_bce, structured_infonce, text2au_loss


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_focal_bce_matches_eq23_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a, g = 0.35, 3.0
    terms = []
    for x, y in zip(logits.flatten().tolist(), labels.flatten().tolist()):
        p = _sigmoid(x)
        terms.append(-a * y * (1 - p) ** g * math.log(p) - (1 - a) * (1 - y) * p ** g * math.log(1 - p))
    expected = sum(terms) / len(terms)
    # first element by hand: p = 0.5 -> 0.35 * 0.125 * ln 2
    assert terms[0] == pytest.approx(0.35 * 0.125 * math.log(2))
    assert focal_bce(logits, labels, a, g).item() == pytest.approx(expected, rel=1e-6)


def test_focal_bce_reduces_to_half_bce_without_focusing():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 17), torch.randint(0, 2, (4, 17)).float()
    got = focal_bce(logits, labels, alpha=0.5, gamma=0.0)
    assert got.item() == pytest.approx(0.5 * F.binary_cross_entropy_with_logits(logits, labels).item(), rel=1e-6)


def test_focal_bce_is_finite_for_extreme_logits_and_downweights_easy_examples():
    logits = torch.tensor([[100.0, -100.0, 100.0]])
    labels = torch.tensor([[0.0, 1.0, 1.0]])
    loss = focal_bce(logits, labels)
    assert torch.isfinite(loss) and loss.item() > 1.0  # two confidently wrong entries dominate
    easy = focal_bce(torch.tensor([[3.0]]), torch.tensor([[1.0]]), gamma=3.0)
    plain = focal_bce(torch.tensor([[3.0]]), torch.tensor([[1.0]]), gamma=0.0)
    assert easy.item() < 0.01 * plain.item()
    with pytest.raises(ValueError):
        focal_bce(torch.zeros(2, 17), torch.zeros(2, 16))


def test_infonce_matches_eq24_by_hand_and_averages_positives():
    z_a = torch.tensor([[1.0, 0.0]])
    z_p = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    z_n = torch.tensor([[[0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]]])
    tau = 0.5
    s_n = [0.0, 0.0, -1.0]
    per_pos = []
    for s_p in (1.0, 0.0, -1.0):
        num = math.exp(s_p / tau)
        per_pos.append(-math.log(num / (num + sum(math.exp(s / tau) for s in s_n))))
    got = structured_infonce(z_a, z_p, z_n, tau)
    assert got.item() == pytest.approx(sum(per_pos) / 3, rel=1e-6)
    # positives do not compete with each other: one positive alone gives its own term
    alone = structured_infonce(z_a, z_p[:, :1], z_n, tau)
    assert alone.item() == pytest.approx(per_pos[0], rel=1e-6)


def test_infonce_prefers_aligned_positive_and_batches_independently():
    torch.manual_seed(1)
    z_a = F.normalize(torch.randn(3, 8), dim=-1)
    z_n = F.normalize(torch.randn(3, 3, 8), dim=-1)
    good = structured_infonce(z_a, z_a.unsqueeze(1).expand(-1, 3, -1), z_n, 0.07)
    bad = structured_infonce(z_a, -z_a.unsqueeze(1).expand(-1, 3, -1), z_n, 0.07)
    assert good.item() < bad.item()
    per_row = [structured_infonce(z_a[i:i + 1], z_a[i:i + 1, None].expand(-1, 3, -1), z_n[i:i + 1], 0.07)
               for i in range(3)]
    assert good.item() == pytest.approx(sum(r.item() for r in per_row) / 3, rel=1e-5)
    with pytest.raises(ValueError):
        structured_infonce(z_a, z_n[:, :, :4], z_n, 0.07)


def test_total_loss_eq25_uses_config_weights():
    torch.manual_seed(2)
    logits, labels = torch.randn(2, 17), torch.randint(0, 2, (2, 17)).float()
    z_a = F.normalize(torch.randn(2, 4), dim=-1)
    z_p, z_n = F.normalize(torch.randn(2, 3, 4), dim=-1), F.normalize(torch.randn(2, 3, 4), dim=-1)
    cfg = Text2AUConfig(lambda_bce=2.0, lambda_infonce=0.25)
    out = text2au_loss(logits, labels, z_a, z_p, z_n, cfg)
    bce = focal_bce(logits, labels, cfg.focal_alpha, cfg.focal_gamma)
    nce = structured_infonce(z_a, z_p, z_n, cfg.infonce_tau)
    assert out["loss"].item() == pytest.approx(2.0 * bce.item() + 0.25 * nce.item(), rel=1e-6)
    assert out["focal_bce"].item() == pytest.approx(bce.item())
