"""Every Triton kernel on the device against the CPU path on the same inputs.

Both sides go through the public ops (validation, dispatch, the autograd Functions), the
device side forced to the Triton backend and the CPU side to the CPU backend. Indices must be
equal, ties included (grid-point clouds make exact ties); float outputs and gradients agree
to the plan's kernel tolerance (the backward kernels add with atomics, in no fixed order).
Each row also says which code paths its inputs reached, and fails if one was missed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from affcli.doctor.numerics import check_close, check_equal, cloud, ops_backend, seeded
from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row


@contextlib.contextmanager
def _fps_limits(limits: tuple[int, int] | None) -> Iterator[None]:
    """The FPS kernel's register-block and tile sizes replaced for the block (the dry run
    reaches the tiled branch with a few hundred points)."""
    from affcli.ops import triton as tri

    if limits is None:
        yield
        return
    before = tri.FPS_MAX_REGISTER_BLOCK, tri.FPS_TILE
    tri.FPS_MAX_REGISTER_BLOCK, tri.FPS_TILE = limits
    try:
        yield
    finally:
        tri.FPS_MAX_REGISTER_BLOCK, tri.FPS_TILE = before


def _sides(device: torch.device, fn: Callable[[torch.device], object]) -> tuple[object, object]:
    """fn on the device with the Triton kernels, then on the CPU with the CPU path."""
    with ops_backend("triton"):
        got = fn(device)
    with ops_backend("cpu"):
        ref = fn(torch.device("cpu"))
    return got, ref


def _max_picks(idx: torch.Tensor, n: int) -> int:
    """How often the most picked point is picked (the backward's atomic adds on one address)."""
    b = idx.shape[0]
    flat = (idx + torch.arange(b).view(b, *([1] * (idx.dim() - 1))) * n).reshape(-1)
    return int(torch.bincount(flat, minlength=b * n).max())


def _require_kernels(device: torch.device) -> None:
    from affcli.ops import triton as tri

    if device.type != "cuda" and not tri.interpreted():
        raise CheckFailed("the kernels can run on the CPU only interpreted: set "
                          "TRITON_INTERPRET=1 before triton is imported")


def check_fps(plan: Plan, row: Row) -> None:
    import triton

    from affcli import ops
    from affcli.ops import triton as tri

    dev = torch.device(plan.device)
    _require_kernels(dev)
    paths = set()
    with _fps_limits(plan.fps_limits):
        for i, case in enumerate(plan.fps):
            xyz = cloud(case.batch, case.points, seed=10 + i, grid=case.grid)
            paths.add("tiled" if triton.next_power_of_2(case.points) > tri.FPS_MAX_REGISTER_BLOCK
                      else "registers")

            def run(d: torch.device, xyz: torch.Tensor = xyz, n: int = case.samples,
                    seed: int = i) -> torch.Tensor:
                torch.manual_seed(seed)  # the same random start per cloud on both sides
                return ops.farthest_point_sample(xyz.to(d), n, start=None)

            got, ref = _sides(dev, run)
            check_equal(f"{case.label} {case.batch}x{case.points}->{case.samples}", got, ref)
    row.figures.update(cases=len(plan.fps), paths="+".join(sorted(paths)),
                       largest=max(c.points for c in plan.fps), indices="equal")
    if paths != {"registers", "tiled"}:
        raise CheckFailed(f"the plan reached only the {'/'.join(paths)} branch")


def check_ball_query(plan: Plan, row: Row) -> None:
    from affcli import ops

    dev = torch.device(plan.device)
    _require_kernels(dev)
    empty = partial = full = 0
    for i, case in enumerate(plan.ball):
        grid = case.layout == "grid"
        xyz = cloud(case.batch, case.points, seed=20 + i, grid=grid)
        centers = cloud(case.batch, case.centers, seed=30 + i, grid=grid)
        if not grid:  # beyond the cloud too: empty and partly filled balls
            centers = centers * 1.6 - 0.3

        def run(d: torch.device, xyz: torch.Tensor = xyz, centers: torch.Tensor = centers,
                r: float = case.radius, k: int = case.k) -> torch.Tensor:
            return ops.ball_query(xyz.to(d), centers.to(d), r, k)

        got, ref = _sides(dev, run)
        check_equal(f"{case.label} r={case.radius} k={case.k}", got, ref)
        d2 = (centers.double().unsqueeze(2) - xyz.double().unsqueeze(1)).square().sum(-1)
        found = (d2 <= case.radius ** 2).sum(-1)
        empty += int((found == 0).sum())
        partial += int(((found > 0) & (found < case.k)).sum())
        full += int((found >= case.k).sum())
    row.figures.update(cases=len(plan.ball), empty=empty, partial=partial, full=full,
                       max_k=max(c.k for c in plan.ball), indices="equal")
    if not (empty and partial and full):
        raise CheckFailed(f"the plan did not reach empty, partial and full balls alike "
                          f"(empty={empty}, partial={partial}, full={full})")


def check_three_nn(plan: Plan, row: Row) -> None:
    from affcli import ops

    dev = torch.device(plan.device)
    _require_kernels(dev)
    worst = 0.0
    for i, case in enumerate(plan.nn):
        unknown = cloud(case.batch, case.unknown, seed=40 + i, grid=case.grid)
        if case.grid:
            unknown = unknown * 0.5  # half-steps: equidistant from several grid points
        known = cloud(case.batch, case.known, seed=50 + i, grid=case.grid)

        def run(d: torch.device, u: torch.Tensor = unknown, k: torch.Tensor = known
                ) -> tuple[torch.Tensor, torch.Tensor]:
            return ops.three_nn(u.to(d), k.to(d))

        (got_d, got_i), (ref_d, ref_i) = _sides(dev, run)
        check_equal(f"{case.label} indices", got_i, ref_i)
        worst = max(worst, check_close(f"{case.label} distances", got_d, ref_d,
                                       plan.tol("kernel")))
    row.figures.update(cases=len(plan.nn), indices="equal", max_rel_distances=worst)


def check_gather_group(plan: Plan, row: Row) -> None:
    from affcli import ops

    dev = torch.device(plan.device)
    _require_kernels(dev)
    b, c, n, m, k = plan.gather
    features = torch.randn(b, c, n, generator=seeded(60))
    idx = torch.randint(0, n, (b, m, k), generator=seeded(61))  # many picks per point
    grad = torch.randn(b, c, m, k, generator=seeded(62))

    def run(d: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        f = features.to(d).requires_grad_()
        out = ops.gather_group(f, idx.to(d))
        out.backward(grad.to(d))
        return out.detach(), f.grad

    (got, got_g), (ref, ref_g) = _sides(dev, run)
    tol = plan.tol("kernel")
    fwd = check_close("forward", got, ref, tol)
    bwd = check_close("backward (features)", got_g, ref_g, tol)
    row.figures.update(shape=f"{b}x{c}x{n} by {m}x{k}", max_picks_per_point=_max_picks(idx, n),
                       max_rel_forward=fwd, max_rel_backward=bwd)


def check_three_interpolate(plan: Plan, row: Row) -> None:
    from affcli import ops

    dev = torch.device(plan.device)
    _require_kernels(dev)
    b, c, m, n = plan.interpolate
    features = torch.randn(b, c, m, generator=seeded(70))
    idx = torch.randint(0, m, (b, n, 3), generator=seeded(71))
    weight = torch.rand(b, n, 3, generator=seeded(72))
    weight = weight / weight.sum(-1, keepdim=True)
    grad = torch.randn(b, c, n, generator=seeded(73))

    def run(d: torch.device) -> tuple[torch.Tensor, ...]:
        f = features.to(d).requires_grad_()
        w = weight.to(d).requires_grad_()
        out = ops.three_interpolate(f, idx.to(d), w)
        out.backward(grad.to(d))
        return out.detach(), f.grad, w.grad

    got, ref = _sides(dev, run)
    tol = plan.tol("kernel")
    figures = {name: check_close(name, a, r, tol) for name, a, r in zip(
        ("forward", "backward (features)", "backward (weights)"), got, ref, strict=True)}
    row.figures.update(shape=f"{b}x{c}x{m} to {n}", max_picks_per_point=_max_picks(idx, m),
                       max_rel_forward=figures["forward"],
                       max_rel_backward=max(figures["backward (features)"],
                                            figures["backward (weights)"]))


CHECKS: tuple[tuple[str, Callable[[Plan, Row], None]], ...] = (
    ("kernel farthest_point_sample", check_fps),
    ("kernel ball_query", check_ball_query),
    ("kernel three_nn", check_three_nn),
    ("kernel gather_group", check_gather_group),
    ("kernel three_interpolate", check_three_interpolate),
)
