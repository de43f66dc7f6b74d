"""Each distillation loss against a value worked out by hand on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from slimkit.train.losses import (
    FeatureAdapter,
    attention_loss,
    cosine_loss,
    embedding_mse,
    feature_loss,
    relational_loss,
    response_loss,
    rkd_angle_loss,
    rkd_distance_loss,
)


def test_response_loss_by_hand() -> None:
    # T = 2: the teacher's [2, 0] softens to softmax([1, 0]) = [0.731059, 0.268941], the
    # student's [1, 2] to softmax([0.5, 1]) = [0.377541, 0.622459].
    # KL = 0.731059 ln(0.731059/0.377541) + 0.268941 ln(0.268941/0.622459) = 0.257403,
    # times T^2 = 1.029613. Cross entropy of [1, 2] for class 0 is ln(1 + e) = 1.313262.
    s, t, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    soft = response_loss(s, t, None, temperature=2.0)
    assert soft.item() == pytest.approx(1.029613, abs=1e-5)
    assert response_loss(s, t, y, temperature=2.0, alpha=1.0).item() == pytest.approx(1.029613,
                                                                                      abs=1e-5)
    mixed = response_loss(s, t, y, temperature=2.0, alpha=0.5)
    assert mixed.item() == pytest.approx(0.5 * 1.029613 + 0.5 * 1.313262, abs=1e-5)
    assert response_loss(t, t, None).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_loss_linear_and_conv_adapters_by_hand() -> None:
    adapter = FeatureAdapter(torch.Size([1, 2]), torch.Size([1, 3]))
    with torch.no_grad():
        adapter.map.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # [1, 2] maps to [1, 2, 3]; against [1, 0, 3] the squared errors are 0, 4, 0: mean 4/3.
    loss = feature_loss(adapter, torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0]]))
    assert loss.item() == pytest.approx(4 / 3)

    conv = FeatureAdapter(torch.Size([1, 1, 2, 2]), torch.Size([1, 2, 1, 1]))
    assert isinstance(conv.map, torch.nn.Conv2d)
    with torch.no_grad():
        conv.map.weight.fill_(2.0)
    # Ones times 2 is 2 in both output channels, pooled to the teacher's 1x1: [2, 2] vs [1, 2].
    loss = feature_loss(conv, torch.ones(1, 1, 2, 2), torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert conv.map.weight.grad is not None


def test_attention_transfer_by_hand() -> None:
    # Student channels [1, 2] and [3, 0]: mean of squares per position [5, 2], normalised
    # [0.928477, 0.371391]. Teacher all ones: [0.707107, 0.707107].
    # Mean squared difference: (0.221370^2 + 0.335716^2) / 2 = 0.080855.
    s = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).view(1, 2, 1, 2)
    t = torch.ones(1, 3, 1, 2)
    assert attention_loss(s, t).item() == pytest.approx(0.080855, abs=1e-6)
    assert attention_loss(s, torch.cat([s, s], 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_relational_distance_and_angle_by_hand() -> None:
    # Points 0, 1, 3 against 0, 2, 4: distances (1, 3, 2) over their mean 2 and (2, 4, 2)
    # over 8/3 give (0.5, 1.5, 1) and (0.75, 1.5, 0.75). Two of the three pairs differ by
    # 0.25, each counted twice in the 3x3 matrix: Huber 0.5 * 0.25^2 * 4 / 9 = 1/72.
    s, t = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[0.0], [2.0], [4.0]])
    assert rkd_distance_loss(s, t).item() == pytest.approx(1 / 72, abs=1e-6)
    # Triangles (0,0) (1,0) (0,1) and (0,0) (2,0) (0,1): the right angle agrees; at the other
    # corners cos 45 = 0.707107 meets 2/sqrt(5) = 0.894427 and 1/sqrt(5) = 0.447214. Each
    # angle appears twice among the 27 triplets: 0.5 * 2 * (0.187320^2 + 0.259893^2) / 27.
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert rkd_angle_loss(s, t).item() == pytest.approx(0.0038012, abs=1e-6)
    both = relational_loss(s, t)
    assert both.item() == pytest.approx(rkd_distance_loss(s, t).item() + 2 * 0.0038012, abs=1e-6)
    # Relations ignore scale and rotation: a scaled, rotated copy costs nothing.
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert relational_loss(3 * t @ rot, t).item() == pytest.approx(0.0, abs=1e-6)


def test_embedding_losses_by_hand() -> None:
    # cos([1, 0], [1, 0]) = 1 and cos([1, 1], [0, 1]) = 0.707107: mean of 1 - cos is 0.146447.
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cosine_loss(s, t).item() == pytest.approx(0.146447, abs=1e-6)
    # [1, 2] against [3, 2]: squared errors 4 and 0, mean 2.
    assert embedding_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.0]])).item() == 2.0


def test_hidden_state_loss_by_hand() -> None:
    from slimkit.train.losses import hidden_state_loss

    # Tokens: [3, 4] against [0, 4] -> 9 / 16; [1, 0] against [2, 0] -> 1 / 4; the third token
    # is padding, its error of 1 left out by the mask. Mean over kept tokens: 0.40625.
    s = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[0.0, 4.0], [2.0, 0.0], [0.0, 2.0]]])
    assert hidden_state_loss(s, t, torch.tensor([[1, 1, 0]])).item() == pytest.approx(0.40625)
    assert hidden_state_loss(s, t).item() == pytest.approx((9 / 16 + 1 / 4 + 1 / 4) / 3)


def test_relational_loss_of_a_batch_too_small_to_compare_is_zero_not_nan() -> None:
    from slimkit.train.losses import relational_loss

    s = torch.randn(1, 4, requires_grad=True)
    loss = relational_loss(s, torch.randn(1, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()
