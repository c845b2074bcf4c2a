"""`affcli bench ops` on the device: the Triton kernels and our encoder against the reference
utility's algorithms run on the same device (`bench.runs.bench_ops_device`), at the plan's
batch sizes, medians over CUDA-event timings on a GPU (the wall clock in the dry run, whose
figures mean nothing but that the code ran)."""

from __future__ import annotations

import torch

from affcli.doctor.numerics import ops_backend
from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row

# short figure names for the table (the JSON keeps every row as `bench ops` gives it)
_SHORT = {"FPS": "fps", "ball query": "ball_query", "gathers": "gathers", "3-NN": "interp",
          "encoder forward (eval)": "enc_eval", "encoder forward (train)": "enc_train",
          "encoder forward+backward": "enc_fwd_bwd"}


def _short(op: str) -> str:
    return next((v for k, v in _SHORT.items() if op.startswith(k)), op)


def check_bench(plan: Plan, row: Row, batch: int) -> None:
    from affcli.bench.runs import bench_ops_device
    from affcli.nn.pointnet2 import EncoderConfig

    dev = torch.device(plan.device)
    cfg = EncoderConfig(**plan.encoder_config) if plan.encoder_config else None
    with ops_backend("triton"):
        rows = bench_ops_device(dev, batch, plan.bench_points, plan.bench_repeats,
                                encoder=True, encoder_config=cfg, warmup=plan.bench_warmup)
    row.figures.update(batch=batch, points=plan.bench_points, repeats=plan.bench_repeats,
                       timer="cuda events" if dev.type == "cuda" else "wall clock")
    for r in rows:
        row.figures[_short(r["op"])] = (f"{r['ours_ms']:.2f}/{r['reference_ms']:.2f} ms "
                                        f"({r['speedup']:.3g}x)")
    row.figures["rows"] = rows
    bad = [r["op"] for r in rows if not (r["ours_ms"] > 0 and r["reference_ms"] > 0)]
    if bad:
        raise CheckFailed(f"no timing for {', '.join(bad)}")
