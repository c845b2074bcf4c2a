"""The Triton kernels against the float64 references and the CPU backend.

Without a GPU the kernels run in Triton's interpreter on CPU tensors, which must be switched on
before any kernel is defined; sizes stay small because the interpreter is slow.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import affcli.ops as ops  # noqa: E402
from affcli.ops import cpu  # noqa: E402
from affcli.ops import triton as tri  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# Without a GPU the kernels must be interpreted. That is decided when triton (and its own
# @jit library functions) is first imported, so if some other module imported it before this
# file could set TRITON_INTERPRET, nothing here can repair it: say so instead of failing oddly.
if DEVICE.type == "cpu" and not tri.interpreted():
    raise RuntimeError("no GPU and the Triton kernels are not interpreted: set TRITON_INTERPRET=1 "
                       "before triton is first imported (e.g. in the environment or conftest.py)")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=_gen(seed), dtype=dtype).to(DEVICE)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype).to(DEVICE)


def _grid_points(*shape: int, seed: int, levels: int = 3) -> torch.Tensor:
    """Points on a small integer grid: many duplicates and exactly equal distances (exact in
    float32 and float64 alike, so ties are real ties in every implementation)."""
    g = torch.randint(0, levels, shape, generator=_gen(seed))
    return g.float().to(DEVICE)


def _starts(b: int, n_pts: int, seed: int) -> torch.Tensor:
    return torch.randint(0, n_pts, (b,), generator=_gen(seed)).to(DEVICE)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.cpu(), b.cpu())


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    tol = 1e-10 if a.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(a.cpu().double(), b.cpu().double(), rtol=0, atol=tol)


@pytest.fixture
def tiled_fps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force FPS onto its large-cloud path (distances in a scratch buffer, several tiles)."""
    monkeypatch.setattr(tri, "FPS_MAX_REGISTER_BLOCK", 16)
    monkeypatch.setattr(tri, "FPS_TILE", 32)


# --------------------------------------------------------------------------- FPS


@pytest.mark.parametrize(("b", "n_pts", "n"), [(1, 16, 16), (2, 100, 17), (2, 256, 64)])
def test_fps_matches_reference_and_cpu(b: int, n_pts: int, n: int) -> None:
    xyz = _rand(b, n_pts, 3, seed=n_pts)
    starts = _starts(b, n_pts, seed=n)
    got = tri.farthest_point_sample(xyz, n, starts)
    assert got.device == xyz.device
    _same(got, oracle.farthest_point_sample(xyz, n, starts.cpu()))
    _same(got, cpu.farthest_point_sample(xyz.cpu(), n, starts.cpu()))
    assert all(len(set(row.tolist())) == n for row in got)  # distinct points: no repeats


@pytest.mark.usefixtures("tiled_fps")
@pytest.mark.parametrize(("b", "n_pts", "n"), [(1, 32, 5), (2, 100, 24)])
def test_fps_tiled_path(b: int, n_pts: int, n: int) -> None:
    xyz = _rand(b, n_pts, 3, seed=7 + n_pts)
    starts = _starts(b, n_pts, seed=3)
    _same(tri.farthest_point_sample(xyz, n, starts),
          oracle.farthest_point_sample(xyz, n, starts.cpu()))


@pytest.mark.parametrize("tiled", [False, True])
def test_fps_exact_ties_take_lowest_index(tiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if tiled:
        monkeypatch.setattr(tri, "FPS_MAX_REGISTER_BLOCK", 16)
        monkeypatch.setattr(tri, "FPS_TILE", 16)
    # 27 distinct grid positions among 90 points: once they are exhausted every distance is 0
    # and the lowest index must win each round.
    xyz = _grid_points(2, 90, 3, seed=11)
    starts = torch.tensor([0, 89], device=DEVICE)
    got = tri.farthest_point_sample(xyz, 40, starts)
    _same(got, oracle.farthest_point_sample(xyz, 40, starts.cpu()))
    _same(got, cpu.farthest_point_sample(xyz.cpu(), 40, starts.cpu()))


# --------------------------------------------------------------------------- ball query


@pytest.mark.parametrize(("b", "n_pts", "m", "k", "radius"),
                         [(1, 64, 8, 1, 0.3), (2, 200, 33, 4, 0.25), (2, 256, 64, 16, 0.2)])
def test_ball_query_matches_reference_and_cpu(b: int, n_pts: int, m: int, k: int,
                                              radius: float) -> None:
    xyz = _rand(b, n_pts, 3, seed=n_pts + k)
    centers = _rand(b, m, 3, seed=m + k)
    got = tri.ball_query(xyz, centers, radius, k)
    assert got.device == xyz.device
    _same(got, oracle.ball_query(xyz, centers, radius, k))
    _same(got, cpu.ball_query(xyz.cpu(), centers.cpu(), radius, k))


def test_ball_query_covers_full_padded_and_empty_rows() -> None:
    # Centres spread beyond the cloud: some find more than k points, some fewer, some none.
    xyz = _rand(2, 256, 3, seed=5)
    centers = _rand(2, 64, 3, seed=6) * 1.6 - 0.3
    k, radius = 8, 0.25
    got = tri.ball_query(xyz, centers, radius, k)
    _same(got, oracle.ball_query(xyz, centers, radius, k))
    _same(got, cpu.ball_query(xyz.cpu(), centers.cpu(), radius, k))
    d2 = torch.cdist(centers.double().cpu(), xyz.double().cpu()) ** 2
    found = (d2 <= radius**2).sum(-1)
    assert (found >= k).any() and ((found > 0) & (found < k)).any() and (found == 0).any()


def test_ball_query_tiny_radius_finds_only_the_centre() -> None:
    xyz = _rand(2, 128, 3, seed=21)
    which = torch.tensor([[0, 5, 127, 64], [3, 3, 100, 1]], device=DEVICE)
    centers = torch.gather(xyz, 1, which.unsqueeze(-1).expand(-1, -1, 3))
    got = tri.ball_query(xyz, centers, 1e-6, 4)
    _same(got, which.unsqueeze(-1).expand(-1, -1, 4).contiguous())
    _same(got, oracle.ball_query(xyz, centers, 1e-6, 4))


def test_ball_query_nothing_in_range_gives_zeros() -> None:
    xyz = _rand(2, 100, 3, seed=22)
    centers = _rand(2, 9, 3, seed=23) + 10.0
    got = tri.ball_query(xyz, centers, 0.5, 4)
    _same(got, torch.zeros(2, 9, 4, dtype=torch.int64, device=DEVICE))


def test_ball_query_boundary_and_duplicates() -> None:
    # Grid points: many at distance exactly 1 = radius (must be in: <=), many duplicates.
    xyz = _grid_points(2, 150, 3, seed=31)
    centers = _grid_points(2, 20, 3, seed=32)
    for radius, k in ((1.0, 16), (1.5, 4), (0.5, 1)):
        got = tri.ball_query(xyz, centers, radius, k)
        _same(got, oracle.ball_query(xyz, centers, radius, k))
        _same(got, cpu.ball_query(xyz.cpu(), centers.cpu(), radius, k))


# --------------------------------------------------------------------------- three_nn


@pytest.mark.parametrize(("b", "n", "m"), [(1, 16, 3), (2, 100, 50), (2, 256, 130)])
def test_three_nn_matches_reference_and_cpu(b: int, n: int, m: int) -> None:
    unknown = _rand(b, n, 3, seed=n)
    known = _rand(b, m, 3, seed=m + 1)
    dist, idx = tri.three_nn(unknown, known)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    assert dist.device == unknown.device
    ref_dist, ref_idx = oracle.three_nn(unknown, known)
    _same(idx, ref_idx)
    _close(dist, ref_dist)
    cpu_dist, cpu_idx = cpu.three_nn(unknown.cpu(), known.cpu())
    _same(idx, cpu_idx)
    _same(dist, cpu_dist)


def test_three_nn_exact_ties_take_lower_index() -> None:
    # 150 known points on 27 grid positions, several tiles of 64: ties within and across tiles.
    unknown = _grid_points(2, 40, 3, seed=41) * 0.5
    known = _grid_points(2, 150, 3, seed=42)
    dist, idx = tri.three_nn(unknown, known)
    ref_dist, ref_idx = oracle.three_nn(unknown, known)
    _same(idx, ref_idx)
    _close(dist, ref_dist)
    _same(idx, cpu.three_nn(unknown.cpu(), known.cpu())[1])


# --------------------------------------------------------------------------- gathers


def _scatter_reference(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """d gather_group / d features, by explicit loops in float64."""
    g, ix = grad.detach().cpu().double(), idx.cpu()
    b_, c_, m_, k_ = g.shape
    out = torch.zeros(b_, c_, n, dtype=torch.float64)
    for b in range(b_):
        for m in range(m_):
            for j in range(k_):
                out[b, :, ix[b, m, j]] += g[b, :, m, j]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "c", "n", "m", "k"), [(1, 1, 5, 3, 1), (2, 8, 100, 40, 16)])
def test_gather_group_forward_and_backward(dtype: torch.dtype, b: int, c: int, n: int, m: int,
                                           k: int) -> None:
    features = _randn(b, c, n, seed=c + n, dtype=dtype)
    idx = torch.randint(0, n, (b, m, k), generator=_gen(m)).to(DEVICE)  # repeats: real sums
    out = tri.gather_group(features, idx)
    assert out.dtype == dtype and out.device == features.device
    _same(out, cpu.gather_group(features.cpu(), idx.cpu()))
    _close(out, oracle.gather_group(features, idx.cpu()))

    grad = _randn(b, c, m, k, seed=99, dtype=dtype)
    back = tri.gather_group_backward(grad, idx, n)
    assert back.dtype == dtype and back.shape == (b, c, n)
    _close(back, _scatter_reference(grad, idx, n))
    _close(back, cpu.gather_group_backward(grad.cpu(), idx.cpu(), n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "c", "m", "n"), [(1, 1, 3, 4), (2, 8, 40, 150)])
def test_three_interpolate_forward_and_backward(dtype: torch.dtype, b: int, c: int, m: int,
                                                n: int) -> None:
    features = _randn(b, c, m, seed=m, dtype=dtype)
    idx = torch.randint(0, m, (b, n, 3), generator=_gen(n)).to(DEVICE)
    weight = _rand(b, n, 3, seed=n + 1, dtype=dtype)
    out = tri.three_interpolate(features, idx, weight)
    assert out.dtype == dtype and out.device == features.device
    _close(out, oracle.three_interpolate(features, idx.cpu(), weight))
    _close(out, cpu.three_interpolate(features.cpu(), idx.cpu(), weight.cpu()))

    grad = _randn(b, c, n, seed=77, dtype=dtype)
    back = tri.three_interpolate_backward(grad, idx, weight, m)
    assert back.dtype == dtype and back.shape == (b, c, m)
    # d out / d features = scatter of grad * weight over idx
    spread = grad.cpu().double().unsqueeze(-1) * weight.cpu().double().unsqueeze(1)
    _close(back, _scatter_reference(spread, idx, m))
    _close(back, cpu.three_interpolate_backward(grad.cpu(), idx.cpu(), weight.cpu(), m))


# --------------------------------------------------------------------------- public API


@pytest.fixture
def force_triton(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """AFFCLI_OPS=triton, plus a record of which backend functions the public ops called."""
    monkeypatch.setenv("AFFCLI_OPS", "triton")
    calls: list[str] = []
    for name in ("farthest_point_sample", "ball_query", "three_nn", "gather_group",
                 "gather_group_backward", "three_interpolate", "three_interpolate_backward"):
        fn = getattr(tri, name)

        def spy(*args: object, _fn=fn, _name=name) -> object:
            calls.append(_name)
            return _fn(*args)

        monkeypatch.setattr(tri, name, spy)
    return calls


def test_public_searches_dispatch_to_triton_with_non_contiguous_inputs(
        force_triton: list[str]) -> None:
    xyz = _rand(2, 3, 120, seed=51).transpose(1, 2)  # [B, N, 3], channels-first storage
    centers = _rand(2, 40, 6, seed=52)[:, ::2, 1:4]  # strided rows and a column window
    unknown = _rand(2, 3, 70, seed=53).transpose(1, 2)
    assert not (xyz.is_contiguous() or centers.is_contiguous() or unknown.is_contiguous())
    assert ops.backend_for(xyz) == "triton"

    fps = ops.farthest_point_sample(xyz, 20, start=3)
    starts = torch.full((2,), 3, dtype=torch.int64)
    _same(fps, oracle.farthest_point_sample(xyz.contiguous(), 20, starts))

    torch.manual_seed(1234)
    fps_random = ops.farthest_point_sample(xyz, 20, start=None)
    torch.manual_seed(1234)
    starts = torch.randint(0, 120, (2,), dtype=torch.int64)  # what the public op draws
    _same(fps_random, oracle.farthest_point_sample(xyz.contiguous(), 20, starts))

    balls = ops.ball_query(xyz, centers, 0.3, 8)
    _same(balls, oracle.ball_query(xyz.contiguous(), centers.contiguous(), 0.3, 8))

    dist, idx = ops.three_nn(unknown, xyz)
    ref_dist, ref_idx = oracle.three_nn(unknown.contiguous(), xyz.contiguous())
    _same(idx, ref_idx)
    _close(dist, ref_dist)
    assert force_triton == ["farthest_point_sample", "farthest_point_sample", "ball_query",
                            "three_nn"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_public_gathers_dispatch_to_triton_with_non_contiguous_inputs(
        force_triton: list[str], dtype: torch.dtype) -> None:
    features = _randn(2, 30, 6, seed=61, dtype=dtype).transpose(1, 2).requires_grad_()
    idx = torch.randint(0, 30, (2, 10, 8), generator=_gen(62)).to(DEVICE)[..., ::2]
    idx32 = idx.to(torch.int32)  # the public op accepts int32 indices too
    assert not (features.is_contiguous() or idx.is_contiguous())

    out = ops.gather_group(features, idx32)
    _close(out, oracle.gather_group(features, idx.cpu()))
    grad = _randn(*out.shape, seed=63, dtype=dtype)
    out.backward(grad)
    _close(features.grad, _scatter_reference(grad, idx, 30))

    nn_idx = torch.randint(0, 30, (2, 3, 50), generator=_gen(64)).to(DEVICE).transpose(1, 2)
    weight = _rand(2, 3, 50, seed=65, dtype=dtype).transpose(1, 2).requires_grad_()
    feats = features.detach().clone().requires_grad_()
    out = ops.three_interpolate(feats, nn_idx, weight)
    _close(out, oracle.three_interpolate(feats, nn_idx.cpu(), weight))
    grad = _randn(*out.shape, seed=66, dtype=dtype)
    out.backward(grad)
    spread = grad.cpu().double().unsqueeze(-1) * weight.detach().cpu().double().unsqueeze(1)
    _close(feats.grad, _scatter_reference(spread, nn_idx, 30))
    picked = oracle.gather_group(feats, nn_idx.cpu())  # [B, C, n, 3]
    _close(weight.grad, (picked * grad.cpu().double().unsqueeze(-1)).sum(1))
    assert force_triton == ["gather_group", "gather_group_backward", "three_interpolate",
                            "three_interpolate_backward", "gather_group"]


def test_gradcheck_gather_group(force_triton: list[str]) -> None:
    features = _randn(2, 2, 5, seed=71, dtype=torch.float64).requires_grad_()
    idx = torch.tensor([[[0, 4], [4, 4], [2, 0]], [[1, 1], [3, 0], [4, 2]]], device=DEVICE)
    assert torch.autograd.gradcheck(lambda f: ops.gather_group(f, idx), (features,))
    assert "gather_group_backward" in force_triton


def test_gradcheck_three_interpolate(force_triton: list[str]) -> None:
    features = _randn(1, 2, 4, seed=72, dtype=torch.float64).requires_grad_()
    idx = torch.tensor([[[0, 1, 2], [3, 3, 0], [2, 1, 0]]], device=DEVICE)
    weight = _rand(1, 3, 3, seed=73, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(ops.three_interpolate, (features, idx, weight))
    assert "three_interpolate_backward" in force_triton


# --------------------------------------------------------------------------- import


def test_module_imports_without_gpu_or_interpreter() -> None:
    # Importing must not touch CUDA: the kernels compile lazily, at their first launch.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TRITON_INTERPRET", None)
    code = "import affcli.ops.triton as t; assert callable(t.farthest_point_sample)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
