"""Attention blocks of the LASO code base (PointRefer): a multi-head attention with optional
projections and a DETR-style post-norm transformer decoder with query positions.

Parameter names follow the reference (`q_lin`, `k_lin`, `v_lin`, `out_lin.0`; `self_attn`,
`multihead_attn`, `linear1/2`, `norm1/2/3`; `layers.i`, `norm`), so an official state dict
maps onto these modules by prefix only.

Mask convention (PyTorch's): `key_padding_mask` [B, S] is True where a key is padding and must
be ignored. The reference's attention takes the opposite (True = valid token) and inverts it;
the function is the same when callers pass `~attention_mask` here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Multi-head attention with separately optional q / k / v / output projections.

    As in the reference, the logits are q·k / head_dim: the query is divided by sqrt(head_dim)
    and the product multiplied by `qk_scale` (default head_dim ** -0.5) once more.
    `query_dim` lets the query come from another width (the reference's `lan_dim`).
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int | None = None,
                 qkv_bias: bool = False, qk_scale: float | None = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, q_project: bool = True, k_project: bool = True,
                 v_project: bool = True, proj_after_att: bool = True,
                 query_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = (qk_scale or head_dim ** -0.5) / math.sqrt(head_dim)
        self.attn_drop = attn_drop
        self.q_lin = nn.Linear(query_dim or dim, dim, bias=qkv_bias) if q_project else None
        self.k_lin = nn.Linear(dim, dim, bias=qkv_bias) if k_project else None
        self.v_lin = nn.Linear(dim, dim, bias=qkv_bias) if v_project else None
        # a Sequential for the reference's parameter name `out_lin.0`
        self.out_lin = (nn.Sequential(nn.Linear(dim, out_dim or dim), nn.Dropout(proj_drop))
                        if proj_after_att else None)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, L, Dq], key / value [B, S, D], key_padding_mask [B, S] (True = ignore)
        -> [B, L, out_dim]."""
        length, keys = query.shape[1], key.shape[1]
        # (dropped attention weights no longer sum to one, so the value bias would not fold)
        dropping = self.training and self.attn_drop > 0
        if self.k_lin is not None and self._fold_pays(keys, length) and not (
                dropping and self.v_lin is not None and self.v_lin.bias is not None):
            return self._few_queries(query, key, value, key_padding_mask)
        if self.q_lin is not None and self.out_lin is not None and self._fold_pays(length, keys):
            return self._few_keys(query, key, value, key_padding_mask)
        b, h = query.shape[0], self.num_heads

        def heads(x: torch.Tensor, lin: nn.Linear | None) -> torch.Tensor:
            if lin is not None:
                x = lin(x)
            return x.view(b, x.shape[1], h, -1).transpose(1, 2)

        q, k, v = heads(query, self.q_lin), heads(key, self.k_lin), heads(value, self.v_lin)
        mask = None
        if key_padding_mask is not None:
            mask = (~key_padding_mask.bool()).view(b, 1, 1, -1)  # True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale)
        out = out.transpose(1, 2).reshape(b, length, -1)
        return self.out_lin(out) if self.out_lin is not None else out

    # Attention is linear in each projection, so a projection of the long side can be moved
    # onto the short side: q·(W_k x) = (W_k^T q)·x, and A (W_v x) = W_v (A x) since A's rows
    # sum to one. With 40 text tokens against thousands of points (PointRefer's decoder and
    # fusion blocks), that replaces a [points x D x D] product per projection with a
    # [tokens x D x D] one. The function is the same; only the rounding order differs.

    def _fold_pays(self, long: int, short: int) -> bool:
        """Whether moving a D x D projection from `long` rows to `short` rows saves work:
        plain S·D² + L·S·D against L·D² + heads·L·S·D multiply-adds (per projection)."""
        d = self.dim
        return long * d * (d + short) > short * d * (d + self.num_heads * long)

    def _softmax(self, scores: torch.Tensor, key_padding_mask: torch.Tensor | None
                 ) -> torch.Tensor:
        """Attention weights from raw logits [B, H, L, S] (scaled, masked, dropout)."""
        scores = scores * self.scale
        if key_padding_mask is not None:
            pad = key_padding_mask.bool().view(scores.shape[0], 1, 1, -1)
            scores = scores.masked_fill(pad, float("-inf"))
        attn = scores.softmax(dim=-1)
        if self.training and self.attn_drop > 0:
            attn = F.dropout(attn, self.attn_drop)
        return attn

    def _few_queries(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Few queries over many keys: the key and value projections act on the queries'
        side (values without a projection are split into heads as they are)."""
        b, length, _ = query.shape
        h, keys, d = self.num_heads, key.shape[1], key.shape[2]
        q = self.q_lin(query) if self.q_lin is not None else query
        q = q.view(b, length, h, -1)
        wk = self.k_lin.weight.view(h, -1, d)  # [H, Dh, D]
        q_in = torch.einsum("blhe,hed->bhld", q, wk)
        scores = torch.bmm(q_in.reshape(b, h * length, d), key.transpose(1, 2))
        scores = scores.view(b, h, length, keys)
        if self.k_lin.bias is not None:
            # q·b_k: one constant per query row, which softmax ignores; added all the same so
            # that the bias keeps its (zero) gradient and an optimizer treats it as before
            scores = scores + torch.einsum("blhe,he->bhl", q, self.k_lin.bias.view(h, -1)
                                           ).unsqueeze(-1)
        attn = self._softmax(scores, key_padding_mask)
        if self.v_lin is None:
            out = torch.einsum("bhls,bshe->blhe", attn, value.view(b, keys, h, -1))
            out = out.reshape(b, length, -1)
            return self.out_lin(out) if self.out_lin is not None else out
        mixed = torch.bmm(attn.reshape(b, h * length, keys), value).view(b, h, length, d)
        wv = self.v_lin.weight.view(h, -1, d)
        out = torch.einsum("bhld,hed->blhe", mixed, wv).reshape(b, length, -1)
        if self.v_lin.bias is not None:
            out = out + self.v_lin.bias
        return self.out_lin(out) if self.out_lin is not None else out

    def _few_keys(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Many queries over few keys: the query and output projections act on the keys'
        side."""
        b, length, dq = query.shape
        h, keys = self.num_heads, key.shape[1]
        k = self.k_lin(key) if self.k_lin is not None else key
        v = self.v_lin(value) if self.v_lin is not None else value
        k, v = k.view(b, keys, h, -1), v.view(b, keys, h, -1)
        wq = self.q_lin.weight.view(h, -1, dq)  # [H, Dh, Dq]
        k_in = torch.einsum("bshe,hed->bhsd", k, wq).reshape(b, h * keys, dq)
        scores = torch.bmm(query, k_in.transpose(1, 2)).view(b, length, h, keys)
        if self.q_lin.bias is not None:  # b_q·k: one constant per key
            scores = scores + torch.einsum("bshe,he->bhs", k, self.q_lin.bias.view(h, -1)
                                           ).unsqueeze(1)
        attn = self._softmax(scores.transpose(1, 2), key_padding_mask)  # [B, H, L, S]
        lin = self.out_lin[0]
        wo = lin.weight.view(lin.out_features, h, -1)  # [Do, H, Dh]
        v_out = torch.einsum("bshe,ohe->bhso", v, wo).reshape(b, h * keys, -1)
        out = torch.bmm(attn.transpose(1, 2).reshape(b, length, h * keys), v_out)
        if lin.bias is not None:
            out = out + lin.bias
        return self.out_lin[1](out)


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over the queries (positions added to q and k),
    cross-attention to the memory, ReLU feed-forward; each followed by residual + LayerNorm."""

    def __init__(self, d_model: int, nheads: int, dim_feedforward: int = 2048,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nheads)
        self.multihead_attn = MultiheadAttention(d_model, nheads)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                pos: torch.Tensor | None = None, query_pos: torch.Tensor | None = None
                ) -> torch.Tensor:
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(
            self.self_attn(q, k, tgt, key_padding_mask=tgt_key_padding_mask)))
        tgt2 = self.multihead_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory,
                                   key_padding_mask=memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerDecoder(nn.Module):
    """A stack of decoder layers (`layers.i`) and an optional final LayerNorm (`norm`)."""

    def __init__(self, layers: list[TransformerDecoderLayer], norm: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                pos: torch.Tensor | None = None, query_pos: torch.Tensor | None = None
                ) -> torch.Tensor:
        out = tgt
        for layer in self.layers:
            out = layer(out, memory, tgt_key_padding_mask=tgt_key_padding_mask,
                        memory_key_padding_mask=memory_key_padding_mask, pos=pos,
                        query_pos=query_pos)
        return self.norm(out) if self.norm is not None else out
