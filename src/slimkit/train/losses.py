"""Distillation losses: what the student is asked to copy from the teacher.

Outputs (softened logits or embeddings) carry the teacher's final judgement; intermediate
features, attention maps and the relations between examples carry how it gets there, which
helps most when the student is much smaller or its output alone is a weak signal.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def response_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                  temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al.: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    T^2 keeps the soft term's gradients on the scale of the hard one as T grows. Without
    labels only the teacher's term is left.
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                    reduction="batchmean", log_target=True) * t * t
    if labels is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student.float(), labels)


class FeatureAdapter(nn.Module):
    """A learned map from the student's feature width to the teacher's: Linear on the last
    axis, or a 1x1 convolution for [batch, channels, height, width] maps."""

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        self.spatial = len(student_shape) == 4
        if self.spatial:
            self.map: nn.Module = nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False)
            self.size = tuple(teacher_shape[2:])
        else:
            self.map = nn.Linear(student_shape[-1], teacher_shape[-1], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.map(x.float())
        if self.spatial and tuple(y.shape[2:]) != self.size:
            y = F.adaptive_avg_pool2d(y, self.size)
        return y


def feature_loss(adapter: FeatureAdapter, student: torch.Tensor,
                 teacher: torch.Tensor) -> torch.Tensor:
    """FitNets-style hint: MSE between the adapted student features and the teacher's."""
    return F.mse_loss(adapter(student), teacher.float())


def attention_map(features: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis: mean over channels of |f|^p, flattened and L2-normalised."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Mean squared difference of the normalised attention maps; the larger map is pooled to
    the smaller's size when their resolutions differ."""
    hs, ht = student.shape[-2:], teacher.shape[-2:]
    if hs != ht:
        size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
        student, teacher = F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher,
                                                                                        size)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Park et al. RKD-D: Huber loss between pairwise distances, each set divided by its mean
    (so only the shape of the embedding space counts, not its scale)."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    with torch.no_grad():
        target = _normalised_distances(t)
    return F.smooth_l1_loss(_normalised_distances(s), target)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every triplet (i, j, k)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Park et al. RKD-A: Huber loss between the angles every triplet of examples makes."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    with torch.no_grad():
        target = _angles(t)
    return F.smooth_l1_loss(_angles(s), target)


def relational_loss(student: torch.Tensor, teacher: torch.Tensor, distance: float = 1.0,
                    angle: float = 2.0) -> torch.Tensor:
    """RKD with the paper's weights: distance 1, angle 2. A batch of fewer than three has no
    pair or triplet to compare (a last short batch, say): it contributes nothing."""
    if len(student) < 3:
        return student.sum() * 0.0
    return (distance * rkd_distance_loss(student, teacher)
            + angle * rkd_angle_loss(student, teacher))


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity, averaged over the batch: direction only, as embeddings are
    compared in retrieval."""
    return (1.0 - F.cosine_similarity(student.float().flatten(1),
                                      teacher.float().flatten(1), dim=1)).mean()


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student.float(), teacher.float())


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token squared error of [batch, tokens, width] hidden states, relative to the
    teacher's token norm, averaged over the tokens the mask keeps.

    A pooled embedding gives one target per text; matching every token of every layer gives
    hundreds, which is what lets a pruned encoder recover in minutes rather than hours. The
    relative error keeps layers whose states differ in scale on one footing.
    """
    s, t = student.float(), teacher.float()
    err = ((s - t) ** 2).sum(-1) / (t**2).sum(-1).clamp(min=1e-6)
    if mask is None:
        return err.mean()
    keep = mask.to(err.dtype)
    return (err * keep).sum() / keep.sum().clamp(min=1.0)
