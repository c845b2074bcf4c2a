"""Image-point alignment blocks shared by IAGNet and LMAffordance3D (their references define
the same blocks twice): self-relation attention, joint region alignment, and the
cross-attention + fusion that reveals affordance from two context sets."""

from __future__ import annotations

import torch
from torch import nn


class SelfRelation(nn.Module):
    """The reference's 'inherent relation': multi-head self-attention without an output
    projection, scores scaled by the full width (not the head width), residual + LayerNorm."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.dim, self.heads = dim, heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = (q @ k.transpose(-2, -1) / self.dim**0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.ln(out + x)


class JointRegionAlignment(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.to_common = nn.Sequential(
            nn.Conv1d(dim, 2 * dim, 1), nn.BatchNorm1d(2 * dim), nn.ReLU(),
            nn.Conv1d(2 * dim, dim, 1), nn.BatchNorm1d(dim), nn.ReLU(),
        )
        self.i_atten = SelfRelation(dim, heads)
        self.p_atten = SelfRelation(dim, heads)
        self.joint_atten = SelfRelation(dim, heads)

    def forward(self, image_feats: torch.Tensor, point_feats: torch.Tensor) -> torch.Tensor:
        """image_feats [B, C, N_i], point_feats [B, C, N_p] -> [B, N_p + N_i, C]."""
        img = self.to_common(image_feats)
        pts = self.to_common(point_feats)
        phi = pts.transpose(1, 2) @ img * self.scale  # [B, N_p, N_i]
        img_enh = pts @ phi.softmax(dim=1)  # each image region gathers points
        pts_enh = img @ phi.softmax(dim=-1).transpose(1, 2)  # each point gathers regions
        joint = torch.cat([self.p_atten(pts_enh.transpose(1, 2)),
                           self.i_atten(img_enh.transpose(1, 2))], dim=1)
        return self.joint_atten(joint)


class AffordanceRevealed(nn.Module):
    """Cross-attention of the joint tokens over subject and over scene features (one shared
    LayerNorm), then a conv fusion of the two results."""

    def __init__(self, dim: int, proj_dim: int) -> None:
        super().__init__()
        self.scale = proj_dim**-0.5
        self.proj_q = nn.Linear(dim, proj_dim)
        self.proj_sk, self.proj_sv = nn.Linear(dim, proj_dim), nn.Linear(dim, proj_dim)
        self.proj_ek, self.proj_ev = nn.Linear(dim, proj_dim), nn.Linear(dim, proj_dim)
        self.layernorm = nn.LayerNorm(dim)
        self.fusion = nn.Sequential(nn.Conv1d(2 * dim, dim, 1), nn.BatchNorm1d(dim), nn.ReLU())

    def forward(self, joint: torch.Tensor, subject: torch.Tensor, scene: torch.Tensor
                ) -> torch.Tensor:
        """joint [B, T, C], subject / scene [B, N_i, C] -> [B, T, C]."""
        q = self.proj_q(joint)
        att_s = (q @ self.proj_sk(subject).transpose(1, 2) * self.scale).softmax(-1)
        att_e = (q @ self.proj_ek(scene).transpose(1, 2) * self.scale).softmax(-1)
        theta_s = self.layernorm(joint + att_s @ self.proj_sv(subject))
        theta_e = self.layernorm(joint + att_e @ self.proj_ev(scene))
        fused = self.fusion(torch.cat([theta_s, theta_e], dim=-1).transpose(1, 2))
        return fused.transpose(1, 2)
