"""Losses of the three models, as the reference training scripts define them.

- heatmap loss = focal (alpha 0.25, gamma 2; mean over points and batch)
                 + dice on positives and negatives (mean over the batch of 1.5 - dice+ - dice-)
- IAGNet adds cross-entropy on the affordance logits (x 0.3) and a KL divergence between its
  two feature maps (x 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6
CE_WEIGHT = 0.3
KL_WEIGHT = 0.5


def focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
               ) -> torch.Tensor:
    """Mean over all points of the reference's focal term, for pred/target [B, N] in [0, 1]."""
    neg = -(1 - alpha) * pred.pow(gamma) * (1 - target) * torch.log(1 - pred + EPS)
    pos = -alpha * (1 - pred).pow(gamma) * target * torch.log(pred + EPS)
    return (neg + pos).mean()


def focal_loss_from_logits(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                           gamma: float = 2.0) -> torch.Tensor:
    """The focal term of `focal_loss` for pred = sigmoid(logits), its logarithms taken from
    the logits. Equal in value where the sigmoid is not saturated. Where it is, the
    reference's form has no gradient (a logit above ~17 rounds the float32 sigmoid to exactly
    1) or a vanishing one (below ~-14 the 1e-6 inside its logarithm dominates), so a point
    scored wholly wrong hardly moves; here it keeps a gradient of about alpha or 1 - alpha."""
    pred = torch.sigmoid(logits)
    neg = -(1 - alpha) * pred.pow(gamma) * (1 - target) * F.logsigmoid(-logits)
    pos = -alpha * (1 - pred).pow(gamma) * target * F.logsigmoid(logits)
    return (neg + pos).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1.5 - dice(positive) - dice(negative), as the reference. Its
    dice terms have no factor 2 in the numerator, so each is at most 0.5 and a perfect
    prediction scores 0.5; kept as is so that loss values match the reference's."""
    inter_pos = (pred * target).sum(1)
    card_pos = (pred.abs() + target.abs()).sum(1)
    dice_pos = (inter_pos + EPS) / (card_pos + EPS)
    inter_neg = ((1 - pred) * (1 - target)).sum(1)
    card_neg = (2 - pred.abs() - target.abs()).sum(1)
    dice_neg = (inter_neg + EPS) / (card_neg + EPS)
    return (1.5 - dice_pos - dice_neg).mean()


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, logits: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Focal + dice for heatmaps [B, N] (or [B, N, 1]); given the `logits` pred is the
    sigmoid of, the focal term is taken from them (`focal_loss_from_logits`)."""
    if pred.dim() == 3:
        pred, target = pred.squeeze(-1), target.squeeze(-1)
        logits = None if logits is None else logits.squeeze(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ")
    focal = focal_loss(pred, target) if logits is None else focal_loss_from_logits(logits, target)
    return focal + dice_loss(pred, target)


def kl_loss(p_features: torch.Tensor, q_features: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) with each sample's features flattened, batch mean."""
    b = p_features.shape[0]
    p = F.softmax(p_features.reshape(b, -1), dim=-1)
    log_q = F.log_softmax(q_features.reshape(b, -1), dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean")


def iagnet_loss(pred: torch.Tensor, target: torch.Tensor, affordance_logits: torch.Tensor,
                affordance: torch.Tensor, kl_pair: tuple[torch.Tensor, torch.Tensor],
                ce_weight: float = CE_WEIGHT, kl_weight: float = KL_WEIGHT) -> torch.Tensor:
    """heatmap + ce_weight x CE(affordance) + kl_weight x KL, the reference's total."""
    return (heatmap_loss(pred, target) + ce_weight * F.cross_entropy(affordance_logits, affordance)
            + kl_weight * kl_loss(*kl_pair))
