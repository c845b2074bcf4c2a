"""Comparisons, the ops backend a check forces, seeded inputs.

Float results are compared relative to the largest magnitude of the reference tensor
(max |a - b| / max |b|), not element by element: elementwise relative errors explode where a
value cancels to near zero, which says nothing about the kernel.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from affcli.doctor.report import CheckFailed


@contextlib.contextmanager
def ops_backend(name: str | None) -> Iterator[None]:
    """AFFCLI_OPS=name for the block (None: unset, the natural dispatch), restored after.
    The ops read it at every call, so this switches backends within one process."""
    before = os.environ.get("AFFCLI_OPS")
    if name is None:
        os.environ.pop("AFFCLI_OPS", None)
    else:
        os.environ["AFFCLI_OPS"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AFFCLI_OPS", None)
        else:
            os.environ["AFFCLI_OPS"] = before


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are all zeros), in float64 on the CPU."""
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    if a64.shape != b64.shape:
        raise CheckFailed(f"shapes differ: {list(a64.shape)} vs {list(b64.shape)}")
    if not torch.isfinite(a64).all():
        raise CheckFailed("non-finite values in the device result")
    scale = float(b64.abs().max()) if b64.numel() else 0.0
    diff = float((a64 - b64).abs().max()) if a64.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check_close(what: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> float:
    """rel_diff(a, b), or CheckFailed naming `what` when it exceeds `tol`."""
    d = rel_diff(a, b)
    if not d <= tol:
        raise CheckFailed(f"{what}: relative difference {d:.3g} > {tol:.3g}")
    return d


def check_equal(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """Exact equality of index tensors, or CheckFailed with the first differing position."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype != b.dtype or a.shape != b.shape:
        raise CheckFailed(f"{what}: {a.dtype} {list(a.shape)} vs {b.dtype} {list(b.shape)}")
    differ = a != b
    if bool(differ.any()):
        pos = tuple(int(i) for i in differ.nonzero()[0])
        raise CheckFailed(f"{what}: {int(differ.sum())} of {a.numel()} values differ (first "
                          f"at {list(pos)}: {a[pos].item()} vs {b[pos].item()})")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cloud(batch: int, points: int, seed: int, grid: bool = False) -> torch.Tensor:
    """[B, N, 3] float32 on the CPU: uniform in the unit cube, or on a 3-level integer grid
    (27 positions, so distances tie exactly, in float32 as in float64)."""
    if grid:
        return torch.randint(0, 3, (batch, points, 3), generator=seeded(seed)).float()
    return torch.rand(batch, points, 3, generator=seeded(seed))
