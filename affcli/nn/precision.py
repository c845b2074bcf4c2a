"""Float32 islands under mixed precision.

Under autocast (`--amp`: bfloat16 on the CPU) the bulk of a model's products may run in 16
bits, but the scores a model ranks its points by must not: a logit rounded to bfloat16 keeps
8 significant bits, so thousands of points tie and the AUC and aIoU move. Measured on the
512-point demo PointRefer (200 test clouds): with its final query-point product in bfloat16
the aIoU moved by +0.75 points and the AUC by -0.25; with that product in float32, by less
than 0.1 and 0.01 (docs/evaluation.md). Each model computes its last scoring step through
`full_precision`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
_HALF = (torch.bfloat16, torch.float16)


def full_precision(fn: Callable[..., T], *tensors: torch.Tensor) -> T:
    """fn(*tensors) with autocast off and 16-bit tensors widened to float32; other tensors
    (float32, or float64 in a float64 run) pass through unchanged."""
    device = tensors[0].device.type
    with torch.autocast(device, enabled=False):
        return fn(*(t.float() if t.dtype in _HALF else t for t in tensors))

