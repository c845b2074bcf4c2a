"""Two gloo processes (torchrun, launched by `affcli train --nproc 2`) train exactly what one
process trains with the same global batch: the BatchNorm statistics span both processes and
the gradients are averaged, so the per-step losses agree to float rounding."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from affcli.engine import checkpoint as ckpt
from affcli.nn.syncbn import DistributedBatchNorm, convert_batchnorm


def _train(data, out, tmp_path, nproc: int | None) -> list[dict]:
    # float64: BatchNorm over near-constant channels amplifies float32 rounding (different
    # summation orders in 1 and 2 processes) to ~1e-3 in some gradients, which would hide
    # what is compared here; in float64 the two runs must agree to 1e-5 or better.
    cfg = tmp_path / f"run{nproc}.yaml"
    # (one sample per process and step: BatchNorm still has to span both processes; validation
    # on the first batch of 4, two samples from each process: enough to compare the gathered
    # figures)
    cfg.write_text("test_split: null\nprecision: float64\nlr: 0.001\nmax_val_batches: 1\n"
                   "eval_batch_size: 4\n")
    cmd = [sys.executable, "-m", "affcli", "train", "iagnet", "--data", str(data),
           "--epochs", "1", "--batch-size", "2", "--max-batches", "2", "--pairing-num", "1",
           "--points", "512", "--workers", "0", "--config", str(cfg), "--out", str(out),
           "--quiet"]
    if nproc:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_equal_one(prepared, tmp_path):
    data = prepared("piad")
    one = _train(data, tmp_path / "one", tmp_path, None)
    two = _train(data, tmp_path / "two", tmp_path, 2)
    a, b = one[0]["step_losses"], two[0]["step_losses"]
    assert len(a) == len(b) == 2
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    # the second step's loss depends on the first step's update: the gradients agree too
    wa = ckpt.load(tmp_path / "one" / ckpt.LAST)["model"]
    wb = ckpt.load(tmp_path / "two" / ckpt.LAST)["model"]
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa
                if wa[k].is_floating_point())
    assert worst < 1e-6
    # validation was gathered from both processes: same figures
    assert one[0]["val"]["count"] == two[0]["val"]["count"] == 4
    assert one[0]["val"]["aiou"] == pytest.approx(two[0]["val"]["aiou"], abs=1e-5)


def test_convert_keeps_parameters_buffers_and_modes():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.BatchNorm1d(4)))
    net[1].running_mean.fill_(0.5)
    net[2][0].weight.requires_grad_(False)
    net.eval()
    twin = convert_batchnorm(copy.deepcopy(net))
    assert isinstance(twin[1], DistributedBatchNorm)
    assert isinstance(twin[2][0], DistributedBatchNorm)
    ref, got = net.state_dict(), twin.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert not twin[1].training and not twin[2][0].weight.requires_grad


def _sync_worker(rank: int, init: str, x: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = DistributedBatchNorm(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    part = x[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
    y = bn(part)
    # a loss that weighs samples unequally, so the cross-process gradient terms matter
    (y * torch.arange(1, 5.0).view(4, 1, 1)).square().mean().backward()
    torch.save({"y": y.detach(), "grad": part.grad, "w": bn.weight.grad,
                "rm": bn.running_mean, "rv": bn.running_var}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_statistics_and_gradients_span_processes(tmp_path):
    """Each of 2 processes normalises half a batch; outputs, input gradients (x 2, DDP's
    averaging), weight gradients and running statistics equal BatchNorm on the whole."""
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x = torch.randn(8, 3, 5, dtype=torch.float64).float() * 3 + 1
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_sync_worker, args=(init, x, str(tmp_path / "out")), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]
    bn = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    whole = x.clone().requires_grad_(True)
    y = bn(whole)
    w = torch.arange(1, 5.0).repeat(2).view(8, 1, 1)
    # each process's loss is a mean over its half: the sum of both = 2 x the whole mean
    ((y * w).square().mean() * 2).backward()
    assert torch.allclose(torch.cat([p["y"] for p in parts]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([p["grad"] for p in parts]), whole.grad, atol=1e-5)
    assert torch.allclose(parts[0]["w"] + parts[1]["w"], bn.weight.grad, atol=1e-4)
    for p in parts:
        assert torch.allclose(p["rm"], bn.running_mean, atol=1e-6)
        assert torch.allclose(p["rv"], bn.running_var, atol=1e-5)
