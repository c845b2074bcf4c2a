"""The CPU path of every op against the naive float64 reference (tests/ops/oracle.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import oracle as ref  # noqa: E402

from affcli import ops  # noqa: E402
from affcli.bench import baseline_ops  # noqa: E402


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("AFFCLI_OPS", "cpu")


def _cloud(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g) * 2 - 1


@pytest.mark.parametrize("b, n, m, start", [(1, 64, 1, 0), (2, 300, 37, 5), (3, 1024, 256, 1023),
                                            (2, 2048, 512, 0)])
def test_fps_matches_reference(b, n, m, start):
    xyz = _cloud(b, n, seed=n + m)
    got = ops.farthest_point_sample(xyz, m, start=start)
    assert got.dtype == torch.int64 and got.shape == (b, m)
    assert torch.equal(got, ref.farthest_point_sample(xyz, m, torch.full((b,), start)))
    assert (got[:, 0] == start).all()
    assert all(len(set(row.tolist())) == m for row in got)  # distinct while points are


def test_fps_random_start_follows_torch_seed_like_the_reference_utility():
    xyz = _cloud(4, 500, seed=1)
    torch.manual_seed(123)
    ours = ops.farthest_point_sample(xyz, 50, start=None)
    torch.manual_seed(123)
    theirs = baseline_ops.farthest_point_sample(xyz, 50, start=None)
    assert torch.equal(ours, theirs)
    assert len(set(ours[:, 0].tolist())) > 1  # one start per cloud


def test_fps_duplicates_and_non_contiguous():
    base = _cloud(2, 40, seed=2)
    xyz = torch.cat([base, base, base[:, :10]], dim=1)  # exact duplicates: tied distances
    got = ops.farthest_point_sample(xyz, 60, start=3)
    assert torch.equal(got, ref.farthest_point_sample(xyz, 60, torch.full((2,), 3)))
    # once every distinct point is taken, ties at distance 0 go to the lowest index
    channels_first = _cloud(2, 200, seed=3).transpose(1, 2).contiguous()
    view = channels_first.transpose(1, 2)
    assert not view.is_contiguous()
    assert torch.equal(ops.farthest_point_sample(view, 20),
                       ref.farthest_point_sample(view, 20, torch.zeros(2, dtype=torch.long)))


@pytest.mark.parametrize("b, n, m, radius, k", [(1, 100, 10, 0.3, 8), (2, 512, 64, 0.2, 32),
                                                 (2, 1024, 128, 0.8, 64), (1, 256, 40, 2.0, 16)])
def test_ball_query_matches_reference(b, n, m, radius, k):
    xyz = _cloud(b, n, seed=n)
    centers = xyz[:, torch.randperm(n, generator=torch.Generator().manual_seed(m))[:m]]
    got = ops.ball_query(xyz, centers, radius, k)
    assert got.shape == (b, m, k) and got.dtype == torch.int64
    assert torch.equal(got, ref.ball_query(xyz, centers, radius, k))
    # and the reference utility's dense algorithm agrees
    assert torch.equal(got, baseline_ops.ball_query(xyz.double(), centers.double(), radius, k))


def test_ball_query_edge_cases():
    xyz = _cloud(2, 300, seed=9)
    centers = xyz[:, [5, 17, 250]]
    tiny = ops.ball_query(xyz, centers, 1e-6, 4)  # only the centre itself
    assert torch.equal(tiny, torch.tensor([5, 17, 250]).view(1, 3, 1).expand(2, 3, 4))
    far = ops.ball_query(xyz, torch.full((2, 2, 3), 10.0), 0.5, 4)  # nothing in range
    assert torch.equal(far, torch.zeros(2, 2, 4, dtype=torch.long))
    dup = torch.cat([xyz[:, :50], xyz[:, :50]], dim=1)
    got = ops.ball_query(dup, dup[:, :10], 0.3, 20)
    assert torch.equal(got, ref.ball_query(dup, dup[:, :10], 0.3, 20))
    nc = xyz.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(ops.ball_query(nc, centers, 0.25, 8), ref.ball_query(xyz, centers, 0.25, 8))


@pytest.mark.parametrize("b, n, m", [(1, 50, 3), (2, 700, 128), (2, 2048, 512)])
def test_three_nn_matches_reference(b, n, m):
    unknown, known = _cloud(b, n, seed=n), _cloud(b, m, seed=m + 1)
    dist, idx = ops.three_nn(unknown, known)
    rd, ri = ref.three_nn(unknown, known)
    assert torch.equal(idx, ri)
    torch.testing.assert_close(dist.double(), rd, atol=1e-6, rtol=1e-5)
    assert (dist[..., :-1] <= dist[..., 1:]).all()


def test_gathers_match_reference_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 5, 30, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 30, (2, 7, 4), generator=g)
    torch.testing.assert_close(ops.gather_group(feats, idx), ref.gather_group(feats, idx))
    ni = torch.randint(0, 30, (2, 11, 3), generator=g)
    w = torch.rand(2, 11, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ops.three_interpolate(feats, ni, w),
                               ref.three_interpolate(feats, ni, w))
    f = feats.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.gather_group(x, idx), (f,))
    assert torch.autograd.gradcheck(lambda x, y: ops.three_interpolate(x, ni, y), (f, wr))
    # int32 indices and float32 features work too
    out = ops.gather_group(feats.float(), idx.int())
    torch.testing.assert_close(out.double(), ref.gather_group(feats, idx), atol=1e-6, rtol=1e-6)


def test_column_moments():
    y = torch.randn(5000, 7, dtype=torch.float64) * 3 + 1
    mean, var = ops.column_moments(y)
    rv, rm = torch.var_mean(y, dim=0, correction=0)
    torch.testing.assert_close(mean, rm)
    torch.testing.assert_close(var, rv)
    small = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.column_moments(t), (small,))


@pytest.mark.parametrize("call, err, text", [
    (lambda: ops.farthest_point_sample(torch.rand(2, 10, 3), 11), ValueError, "n=11"),
    (lambda: ops.farthest_point_sample(torch.rand(2, 10), 3), ValueError, "[B, N, 3]"),
    (lambda: ops.farthest_point_sample(torch.ones(1, 10, 3, dtype=torch.int64), 3), TypeError,
     "floating"),
    (lambda: ops.farthest_point_sample(torch.rand(1, 10, 3), 3, start=10), ValueError, "start"),
    (lambda: ops.ball_query(torch.rand(2, 10, 3), torch.rand(3, 4, 3), 0.1, 4), ValueError,
     "batch size"),
    (lambda: ops.ball_query(torch.rand(2, 10, 3), torch.rand(2, 4, 3), -1.0, 4), ValueError,
     "radius"),
    (lambda: ops.ball_query(torch.rand(2, 10, 3), torch.rand(2, 4, 3), 0.1, 0), ValueError, "k"),
    (lambda: ops.three_nn(torch.rand(1, 10, 3), torch.rand(1, 2, 3)), ValueError, "at least 3"),
    (lambda: ops.gather_group(torch.rand(1, 4, 10), torch.full((1, 2, 2), 10)), IndexError,
     "outside"),
    (lambda: ops.gather_group(torch.rand(1, 4, 10), torch.zeros(1, 2, 2)), TypeError, "integer"),
    (lambda: ops.three_interpolate(torch.rand(1, 4, 10), torch.zeros(1, 5, 3, dtype=torch.long),
                                   torch.rand(1, 5, 2)), ValueError, "weight"),
])
def test_validation(call, err, text):
    with pytest.raises(err, match=None) as info:
        call()
    assert text in str(info.value)


def test_backend_choice(monkeypatch):
    x = torch.rand(1, 5, 3)
    assert ops.backend_for(x) == "cpu"
    monkeypatch.setenv("AFFCLI_OPS", "triton")
    assert ops.backend_for(x) == "triton"
    monkeypatch.setenv("AFFCLI_OPS", "cuda-please")
    with pytest.raises(ValueError, match="AFFCLI_OPS"):
        ops.backend_for(x)
    monkeypatch.delenv("AFFCLI_OPS")
    assert ops.backend_for(x) == "cpu"  # no CUDA tensor: the CPU path


def test_batch_norm_relu_matches_torch_and_gradcheck():
    g = torch.Generator().manual_seed(8)
    y = torch.randn(3000, 6, generator=g, dtype=torch.float64) * 2 + 0.5
    w = torch.tensor([1.5, -0.7, 0.2, 1.0, -2.0, 0.9], dtype=torch.float64)
    b = torch.linspace(-0.5, 0.5, 6, dtype=torch.float64)
    out, mean, var = ops.batch_norm_relu(y, w, b, 1e-5)
    expect = torch.nn.functional.batch_norm(y, None, None, w, b, True, 0.0, 1e-5).relu()
    torch.testing.assert_close(out, expect)
    rv, rm = torch.var_mean(y, dim=0, correction=0)
    torch.testing.assert_close(mean, rm)
    torch.testing.assert_close(var, rv)
    small = (torch.randn(40, 3, generator=g, dtype=torch.float64).requires_grad_(),
             torch.tensor([1.2, -0.4, 0.8], dtype=torch.float64, requires_grad=True),
             torch.tensor([0.1, 0.3, -0.2], dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda a, c, d: ops.batch_norm_relu(a, c, d, 1e-5)[0], small)



def test_moments_and_max_and_gradcheck():
    g = torch.Generator().manual_seed(12)
    y = torch.randn(6 * 5, 4, generator=g, dtype=torch.float64)
    y[7] = y[6]  # a tie inside a group: the first row of the max takes the gradient
    mean, var, pooled = ops.moments_and_max(y, 6)
    rv, rm = torch.var_mean(y, dim=0, correction=0)
    torch.testing.assert_close(mean, rm)
    torch.testing.assert_close(var, rv)
    torch.testing.assert_close(pooled, y.view(5, 6, 4).amax(1))
    z = torch.randn(4 * 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.moments_and_max(t, 4), (z,))
    with pytest.raises(ValueError, match="multiple"):
        ops.moments_and_max(torch.randn(10, 2), 3)


def test_group_relative_and_gradcheck():
    g = torch.Generator().manual_seed(13)
    rows = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    centers = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 9, (2, 4, 5), generator=g)
    out = ops.group_relative(rows, centers, idx)
    expect = torch.stack([rows[b][idx[b]] - centers[b][:, None] for b in range(2)])
    torch.testing.assert_close(out, expect.reshape(-1, 3))
    r, c = rows.clone().requires_grad_(), centers.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.group_relative(a, b, idx), (r, c))
