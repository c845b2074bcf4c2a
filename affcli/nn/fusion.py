"""PointRefer's adaptive fusion block (the reference's `GPBlock`, LASO CVPR 2024).

Text tokens group the point features by cross-attention (tokens are queries), an MLP-Mixer
mixes the grouped tokens across tokens and channels, and every point then takes the fused
tokens back by attention followed by a feed-forward layer. Points are channels-last
[B, N, C]; text tokens [B, T, C_text]; T is fixed (the token-mixing MLP is T x T).

Parameter names follow the reference (`group_layer`, `mixer.layers.0`, `un_group_layer`)
so an official state dict maps by prefix only.
"""

from __future__ import annotations

import torch
from torch import nn

from affcli.nn.attention import MultiheadAttention


class FeedForward(nn.Module):
    """Linear - GELU - Linear (`fc1`, `fc2`), with dropout after each, as in ViT."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class MixerLayer(nn.Module):
    """One MLP-Mixer layer on [B, T, C]: pre-norm token mixing (bias-free T -> T * e_t -> T,
    e_t a fraction of C as in the reference) then pre-norm channel mixing, both residual."""

    def __init__(self, num_tokens: int, dim: int, token_expansion: float = 0.5,
                 channel_expansion: float = 4.0, drop: float = 0.0) -> None:
        super().__init__()
        token_hidden, channel_hidden = int(token_expansion * dim), int(channel_expansion * dim)
        # Sequentials keep the reference's names (patch_mixer.0 / .3, channel_mixer.0 / .3)
        self.patch_mixer = nn.Sequential(
            nn.Linear(num_tokens, token_hidden, bias=False), nn.GELU(), nn.Dropout(drop),
            nn.Linear(token_hidden, num_tokens, bias=False), nn.Dropout(drop))
        self.channel_mixer = nn.Sequential(
            nn.Linear(dim, channel_hidden), nn.GELU(), nn.Dropout(drop),
            nn.Linear(channel_hidden, dim), nn.Dropout(drop))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.patch_mixer(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mixer(self.norm2(x))


class MLPMixer(nn.Module):
    def __init__(self, num_tokens: int, dim: int, depth: int = 1, drop: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(MixerLayer(num_tokens, dim, drop=drop)
                                      for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TokenGrouping(nn.Module):
    """Text tokens gather point features: q = GELU(tokens), k = v = LayerNorm(points); the
    queries and keys are projected, the values are not and there is no output projection;
    the GELU'd tokens are added back (the reference's `LightGroupAttnBlock`)."""

    def __init__(self, dim: int, num_heads: int, text_dim: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, drop: float = 0.0
                 ) -> None:
        super().__init__()
        if text_dim != dim:
            raise ValueError(f"the residual needs text_dim == dim, got {text_dim} and {dim}")
        self.norm_query = nn.GELU()  # (sic: the reference's "norm" of the query is a GELU)
        self.norm_key = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                       attn_drop=attn_drop, proj_drop=drop, v_project=False,
                                       proj_after_att=False, query_dim=text_dim)
        self.drop = nn.Dropout(drop)

    def forward(self, tokens: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        q = self.norm_query(tokens)
        k = self.norm_key(points)
        return self.attn(q, k, k) + self.drop(q)


class UngroupAttention(nn.Module):
    """Points take the fused tokens back: LayerNorm'd points query LayerNorm'd tokens
    (k = v), full projections, residual to the raw points, then a pre-norm residual
    feed-forward (the reference's `FullAttnCatBlock`)."""

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float = 4.0,
                 qkv_bias: bool = True, attn_drop: float = 0.0, drop: float = 0.0) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                       proj_drop=drop)
        self.ffn = FeedForward(dim, int(dim * ffn_ratio), drop)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, points: torch.Tensor, tokens: torch.Tensor,
                token_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_query(points)
        k = self.norm_key(tokens)
        x = self.attn(q, k, k, key_padding_mask=token_padding_mask) + self.drop(points)
        return self.ffn(self.norm2(x)) + x


class AdaptiveFusionBlock(nn.Module):
    """forward(text tokens [B, T, text_dim], points [B, N, dim]) -> fused points [B, N, dim].

    1. group: tokens attend over the points (`group_layer`);
    2. mix: MLP-Mixer over tokens and channels, plus the grouped tokens once more (the
       reference adds them to the mixer's already residual output: g + mixer(g));
    3. ungroup: points attend over the mixed tokens, then a feed-forward (`un_group_layer`).

    `token_padding_mask` [B, T] (True = padding) zeroes padded tokens after grouping and hides
    them from the points; PointRefer calls the block without it, as the reference does.
    """

    def __init__(self, dim: int, num_tokens: int, text_dim: int | None = None, depth: int = 1,
                 num_group_heads: int = 4, num_ungroup_heads: int = 4, ffn_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_tokens = num_tokens
        self.group_layer = TokenGrouping(dim, num_group_heads, text_dim or dim, qkv_bias,
                                         attn_drop=attn_drop, drop=drop)
        self.mixer = MLPMixer(num_tokens, dim, depth=depth, drop=drop)
        self.un_group_layer = UngroupAttention(dim, num_ungroup_heads, ffn_ratio, qkv_bias,
                                               attn_drop=attn_drop, drop=drop)
        self.drop = nn.Dropout(drop)

    def forward(self, tokens: torch.Tensor, points: torch.Tensor,
                token_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} text tokens, got {tokens.shape[1]}")
        groups = self.group_layer(tokens, points)
        if token_padding_mask is not None:
            groups = groups * (~token_padding_mask).unsqueeze(-1).to(groups.dtype)
        groups = self.mixer(groups) + self.drop(groups)
        return self.un_group_layer(points, groups, token_padding_mask)
