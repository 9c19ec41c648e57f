"""Speech-to-AU losses (eq. 9–11) on hand-computed cases, including masks."""

import pytest
import torch

from emodifftalk.losses import au_regression_loss, au_temporal_loss, speech_to_au_loss


def test_regression_hand_computed_with_masks():
    pred = torch.zeros(1, 3, 17)
    target = torch.zeros(1, 3, 17)
    target[0, 0, 0] = 0.5  # valid
    target[0, 1, 0] = 0.2  # valid
    target[0, 2, 0] = 0.9  # frame masked
    target[0, 0, 13] = float("nan")  # AU24 invalid label: must not poison the loss
    au_mask = torch.ones(1, 3, 17, dtype=torch.bool)
    au_mask[..., 13] = False
    frame_mask = torch.tensor([[True, True, False]])
    loss = au_regression_loss(pred, target, au_mask, frame_mask)
    # valid entries: 2 frames x 16 AUs = 32; |err| sum = 0.5 + 0.2
    assert torch.isclose(loss, torch.tensor(0.7 / 32))
    assert torch.isclose(au_regression_loss(pred, torch.nan_to_num(target), None, None),
                         torch.tensor((0.5 + 0.2 + 0.9) / 51))


def test_regression_all_masked_is_zero_with_grad():
    pred = torch.rand(2, 4, 17, requires_grad=True)
    loss = au_regression_loss(pred, torch.rand(2, 4, 17), torch.zeros(2, 4, 17, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_temporal_hand_computed():
    pred = torch.zeros(2, 4, 17)
    pred[0, 1, 0] = 1.0  # pairs (0,1): 1, (1,2): 1, (2,3): 0
    pred[1, :, 2] = torch.tensor([0.0, 0.5, 0.5, 3.0])  # (0,1): 0.25, (1,2): 0, (2,3) masked
    frame_mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    loss = au_temporal_loss(pred, frame_mask)
    assert torch.isclose(loss, torch.tensor((1 + 1 + 0 + 0.25 + 0) / 5))
    assert au_temporal_loss(torch.rand(1, 1, 17)).item() == 0.0  # no pair


def test_combined_uses_weights():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 5, 17), torch.rand(2, 5, 17)
    out = speech_to_au_loss(pred, target, None, None, lambda_reg=1.0, lambda_temp=0.1)
    reg, temp = au_regression_loss(pred, target), au_temporal_loss(pred)
    assert torch.isclose(out["loss"], reg + 0.1 * temp)
    assert torch.isclose(out["reg"], reg) and torch.isclose(out["temp"], temp)
    out2 = speech_to_au_loss(pred, target, None, None, lambda_reg=2.0, lambda_temp=0.0)
    assert torch.isclose(out2["loss"], 2 * reg)


def test_shape_mismatch_is_caught():
    with pytest.raises(AssertionError, match="target"):
        au_regression_loss(torch.rand(1, 3, 17), torch.rand(1, 4, 17))
