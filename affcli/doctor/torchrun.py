"""`affcli train` for one epoch in one process under torchrun: the process group (NCCL beside
gloo on a GPU, gloo on the CPU), DistributedDataParallel, the distributed BatchNorm and the
gathered validation, on a tiny synthetic set.

It runs as a child process while the kernel and encoder rows (correctness only, untimed) go
on, and is collected before any row that times something (in the dry run: last). The model is
the first trainable one in the registry; the command is the one `affcli train --nproc K`
relaunches itself as (torchrun, one process).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from typing import IO, Any

import torch

from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row
from affcli.doctor.workspace import Workspace

_TAIL = 1500  # characters of the child's output kept for an error


class TorchrunCheck:
    """start() launches the child; finish(row) waits for it and checks what it left."""

    def __init__(self, plan: Plan, ws: Workspace, model: str, timeout_s: float) -> None:
        self.plan, self.ws, self.model, self.timeout_s = plan, ws, model, timeout_s
        self.out = ws.root / f"torchrun-{model}"
        self.child: subprocess.Popen[str] | None = None
        self.log: IO[str] | None = None
        self.started = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        """Launch the child (once; a failure to launch is reported by finish)."""
        if self.child is not None or self.error is not None:
            return
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 (reported in the row by finish)
            self.error = exc

    def _start(self) -> None:
        from affcli import models
        from affcli.doctor.training import batch_size
        from affcli.engine.distributed import launch_command

        cls = models.model_class(self.model)
        data = self.ws.data(cls.dataset_kinds[0])
        config = self.ws.root / "torchrun.yaml"
        # one validation batch and no final test: the epoch is what is checked
        config.write_text("test_split: null\nmax_val_batches: 1\n")
        argv = ["train", self.model, "--data", str(data), "--epochs", "1",
                "--batch-size", str(batch_size(self.plan, self.model)), "--workers", "0",
                "--device", self.plan.device, "--out", str(self.out), "--config", str(config),
                "--no-plots", "--no-tensorboard", "--quiet"]
        if self.plan.train_points:
            argv += ["--points", str(self.plan.train_points)]
        if self.plan.train_pairing:
            argv += ["--pairing-num", str(self.plan.train_pairing)]
        if self.plan.torchrun_max_batches:
            argv += ["--max-batches", str(self.plan.torchrun_max_batches)]
        cmd, env = launch_command(1, argv)
        env.pop("AFFCLI_OPS", None)  # the child takes its device's own backend
        if self.plan.torchrun_threads:
            for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
                env[var] = str(self.plan.torchrun_threads)
            # (waiting threads that spin would take the cores the rows beside it need)
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONWARNINGS"] = "ignore"
        if torch.device(self.plan.device).type == "cuda":
            env["NCCL_DEBUG"] = "INFO"  # NCCL announces itself: proof that it carried data
        # a file, not a pipe: nobody reads the child's output while the other rows run
        self.log = open(self.ws.root / "torchrun.log", "w+")  # noqa: SIM115 (closed in finish)
        self.started = time.perf_counter()
        # its own process group: a timeout ends torchrun and the trainer it started
        self.child = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                      text=True, start_new_session=True)

    def kill(self) -> None:
        if self.child is not None and self.child.poll() is None:
            try:
                os.killpg(self.child.pid, signal.SIGKILL)
            except OSError:
                pass
            self.child.wait()

    def _output(self) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        self.log = None
        return text

    def finish(self, row: Row) -> None:
        self.start()  # (when its data was never ready: the error is reported here)
        if self.error is not None:
            raise self.error
        assert self.child is not None
        left = self.timeout_s - (time.perf_counter() - self.started)
        try:
            code = self.child.wait(timeout=max(left, 0.01))
        except subprocess.TimeoutExpired:
            self.kill()
            raise CheckFailed(f"torchrun did not finish within {self.timeout_s:g} s "
                              f"(killed); its output ends: {self._output()[-_TAIL:]!r}"
                              ) from None
        output = self._output()
        row.figures.update(model=self.model, world=1, exit_code=code,
                           child_seconds=round(time.perf_counter() - self.started, 1))
        if code != 0:
            raise CheckFailed(f"torchrun exited {code}; its output ends: {output[-_TAIL:]!r}")
        self._check_run(row, output)

    def _check_run(self, row: Row, output: str) -> None:
        from affcli.engine import checkpoint as ckpt

        lines = (self.out / "metrics.jsonl").read_text().splitlines()
        if len(lines) != 1:
            raise CheckFailed(f"metrics.jsonl holds {len(lines)} epochs, expected 1")
        record: dict[str, Any] = json.loads(lines[0])
        loss = record.get("train_loss")
        if not (isinstance(loss, float) and math.isfinite(loss)):
            raise CheckFailed(f"the epoch's training loss is {loss!r}")
        doc = ckpt.load(self.out / ckpt.LAST, mmap=True)
        # every process's RNG state, as a list, is what a process-group run saves
        grouped = isinstance(doc.get("rng"), list)
        cuda = torch.device(self.plan.device).type == "cuda"
        nccl = "NCCL INFO" in output
        row.figures.update(train_loss=loss, steps=len(record.get("step_losses", [])),
                           samples_per_s=record.get("samples_per_s"), process_group=grouped,
                           backend="nccl+gloo" if cuda else "gloo")
        if cuda:
            row.figures["nccl_seen"] = nccl
        if not grouped:
            raise CheckFailed("the run did not train in a process group (last.pt holds one "
                              "RNG state, not one per process)")
        if cuda and not nccl:
            raise CheckFailed("NCCL never announced itself (NCCL_DEBUG=INFO printed nothing)")


def check_torchrun(check: TorchrunCheck, row: Row) -> None:
    try:
        check.finish(row)
    finally:
        check.kill()


def first_model(names: list[str]) -> str:
    if not names:
        raise CheckFailed("no registered model declares data to train on")
    return names[0]
