"""MultiheadAttention moves a projection from the long side to the short one (few text tokens
against many points). In float64 the folded paths must equal the plain per-head attention
(torch's scaled_dot_product_attention on projected q, k, v) in output and in every gradient,
with biases, padding masks, a query width of its own, and the projections the fusion blocks
leave out."""

from __future__ import annotations

import pytest
import torch

from affcli.nn.attention import MultiheadAttention

CASES = {
    # name: (constructor keywords, queries, keys, masked keys)
    "few queries (decoder)": ({"qkv_bias": True}, 5, 300, 7),
    "few keys (points query tokens)": ({"qkv_bias": True}, 300, 5, 2),
    "few queries, values unprojected, no output projection (grouping)":
        ({"qkv_bias": True, "v_project": False, "proj_after_att": False, "query_dim": 24},
         5, 300, 0),
    "few queries, no biases": ({}, 6, 200, 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_folded_attention_equals_the_plain_one(name, monkeypatch):
    kwargs, length, keys, masked = CASES[name]
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4, **kwargs).double().train()
    q_dim = kwargs.get("query_dim", 32)
    query = torch.randn(2, length, q_dim, dtype=torch.float64, requires_grad=True)
    key = torch.randn(2, keys, 32, dtype=torch.float64, requires_grad=True)
    value = torch.randn(2, keys, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, keys, dtype=torch.bool)
    mask[1, keys - masked:] = True  # padding in the second sample only
    weight = torch.randn(2, length, attn.out_lin[0].out_features if attn.out_lin else 32,
                         dtype=torch.float64)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        inputs = [query, key, value, *attn.parameters()]
        out = attn(query, key, value, key_padding_mask=mask if masked else None)
        return out, list(torch.autograd.grad((out * weight).sum(), inputs))

    calls = []
    for path in ("_few_queries", "_few_keys"):
        original = getattr(MultiheadAttention, path)
        monkeypatch.setattr(MultiheadAttention, path,
                            lambda self, *a, _f=original, _p=path: calls.append(_p) or _f(self, *a))
    folded, folded_grads = run()
    assert calls, "the folded path was not taken"
    monkeypatch.setattr(MultiheadAttention, "_fold_pays", lambda self, long, short: False)
    plain, plain_grads = run()
    torch.testing.assert_close(folded, plain, rtol=1e-10, atol=1e-12)
    for got, want in zip(folded_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
