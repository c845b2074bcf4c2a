"""The training loop behind `affcli train`.

One epoch = the global batches of GlobalBatchSampler, each split over the processes; after
it, validation (the recipe's `select_by` metric decides `best.pt`), `last.pt`, a line in
`metrics.jsonl`, and `results.csv` / `results.png` redrawn from it. At the end the best
weights are evaluated on the test split (averaging the recipe's `votes` seeded passes).

Exact resume: everything a step depends on is either derived from (seed, epoch, index) —
batch order, sample augmentation — or saved in the checkpoint — weights, optimizer and
scaler state, RNG states, the step reached. A resumed CPU run therefore repeats the
uninterrupted run's later steps bit for bit, also from a Ctrl-C in the middle of an epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from affcli import models
from affcli.data.datasets import open_dataset
from affcli.data.h5 import FileInfo, fingerprint, read_info
from affcli.data.splits import carve_validation
from affcli.engine import checkpoint as ckpt
from affcli.engine import distributed as D
from affcli.engine import tracking
from affcli.engine.evalplots import write_eval_plots
from affcli.engine.evaluator import (
    amp_dtype,
    autocast,
    constant_baseline,
    predict,
    score,
    to_device,
)
from affcli.engine.recipes import TrainConfig, better, learning_rate
from affcli.engine.results import write_results
from affcli.errors import AffError
from affcli.fileio import DiskFullError, atomic_output, jsonable, write_json
from affcli.memory import keep_freed_memory
from affcli.models.config import load_state


class TrainStep(nn.Module):
    """The loss of a batch as a module's forward, so DistributedDataParallel sees (and
    synchronises) the whole computation, however many forwards the model's loss takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model.training_loss(batch)


@dataclass
class State:
    epoch: int = 0  # epochs completed
    step: int = 0  # batches done in the current epoch (non-zero after an interruption)
    global_step: int = 0
    best_score: float = -math.inf  # of cfg.select_by; -inf/inf until a finite one is seen
    best_epoch: int = 0
    step_losses: list[float] = field(default_factory=list)  # of the current epoch
    skipped: int = 0  # steps of the current epoch skipped for a non-finite loss or gradient
    skipped_total: int = 0


# the signals that stop a run the way Ctrl-C does: finish the batch, save last.pt, exit
# 128 + the signal's number (130, 143, 138) so a job script can tell "stopped, resumable"
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGUSR1"):  # (what SLURM sends with --signal=USR1@seconds)
    STOP_SIGNALS[signal.SIGUSR1] = "SIGUSR1"

# test-only fault injection: the losses of these global steps (1-based, comma-separated)
# become NaN, to exercise the non-finite handling in real processes
FAULT_ENV = "AFFCLI_FAULT_NONFINITE_STEPS"


class Interrupted(Exception):
    """A stop signal during training; `last.pt` holds the state to resume from."""

    def __init__(self, run_dir: Path, signum: int = signal.SIGINT) -> None:
        name = STOP_SIGNALS.get(signum, f"signal {signum}")
        super().__init__(f"stopped by {name}; resume with `affcli train --resume {run_dir}`")
        self.run_dir, self.signum = run_dir, int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class NonFiniteError(AffError):
    """The loss or a gradient became NaN or infinite (more often than --skip-nonfinite
    allows): the run stops with exit code 1, its last good checkpoint kept."""

    exit_code = 1


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave the stop signals to the main process (`pkill -f` and a
    terminal's Ctrl-C reach them too): it finishes the batch and shuts them down."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _fault_steps() -> set[int]:
    raw = os.environ.get(FAULT_ENV, "")
    return {int(x) for x in raw.split(",") if x.strip()}


Hooks = dict[str, Callable[..., None]]


def default_data(model_cls: type, setting: str) -> Path:
    """data/<dataset>_<setting>.h5 for the first dataset kind of the model (what `affcli
    prepare <dataset>` writes by default)."""
    return Path("data") / f"{model_cls.dataset_kinds[0]}_{setting}.h5"


CARVED = "train-carved"  # the val split's name in records when carved from train


def selection_split(train_config: dict[str, Any], splits: Sequence[str]) -> str:
    """The split a run (its train config) chooses best.pt on: the carved part of train,
    the val split it names, else val when the file has one, else test (the references'
    protocol for PIAD and AGPIL)."""
    if train_config.get("val_from_train"):
        return CARVED
    return train_config.get("val_split") or ("val" if "val" in splits else "test")


def check_data(model_name: str, model_cls: type, path: Path) -> FileInfo:
    info = read_info(path)
    if info.dataset not in model_cls.dataset_kinds:
        needs = " or ".join(k.upper() for k in model_cls.dataset_kinds)
        raise AffError(path, f"{model_name} cannot train on {info.dataset.upper()} data: it "
                       f"needs {needs}",
                       hint=f"prepare one with `affcli prepare {model_cls.dataset_kinds[0]} "
                       "--root ...`")
    if "train" not in info.splits:
        raise AffError(path, f"no train split (this file has {', '.join(info.splits)})")
    return info


class Trainer:
    """Build everything from a resolved TrainConfig (or a run folder to resume), then `run`."""

    def __init__(self, cfg: TrainConfig, proc: D.Process, hooks: Hooks | None = None,
                 resume: Path | None = None, force: bool = False) -> None:
        keep_freed_memory()
        self.cfg, self.proc, self.hooks = cfg, proc, hooks or {}
        self.force = force  # resume on a data file that changed since the run started
        self.state = State()
        model_cls = models.model_class(cfg.model)
        data = Path(cfg.data) if cfg.data else default_data(model_cls, cfg.setting)
        self.info = check_data(cfg.model, model_cls, data)
        if cfg.batch_size < model_cls.min_batch_size:
            raise AffError("--batch-size", f"{cfg.model} trains with batches of at least "
                           f"{model_cls.min_batch_size} (BatchNorm over the batch), got "
                           f"{cfg.batch_size}")
        cfg.data = str(data)
        self.data_identity = {"size": data.stat().st_size, "fingerprint": fingerprint(data)}
        self.carve = carve_validation(data, cfg.val_from_train) if cfg.val_from_train else None
        self.val_split = selection_split(cfg.to_dict(), self.info.splits)
        if self.carve is None and self.val_split not in self.info.splits:
            raise AffError(data, f"no split {self.val_split!r} to validate on (this file has "
                           f"{', '.join(self.info.splits)})")
        if cfg.test_split and cfg.test_split not in self.info.splits:
            raise AffError(data, f"no split {cfg.test_split!r} to test on (this file has "
                           f"{', '.join(self.info.splits)})")
        if self.carve is None:
            cfg.val_split = self.val_split  # recorded resolved: `eval` and `compare` read it
        self.amp = bool(cfg.amp if cfg.amp is not None else proc.device.type == "cuda")
        if self.amp and proc.device.type != "cuda":
            self._note("warn", "AMP needs CUDA; training in float32 on the CPU")
            self.amp = False

        torch.manual_seed(cfg.seed)  # same initial weights in every process and on resume
        if cfg.num_points is not None and cfg.num_points > self.info.num_points:
            raise AffError(data, f"--points {cfg.num_points} exceeds the {self.info.num_points}"
                           " points per cloud of this file")
        self.num_points = cfg.num_points or self.info.num_points
        overrides = {"n_points": self.num_points, **cfg.model_config}
        self.model = models.build(cfg.model, **overrides)
        if proc.distributed:
            from affcli.nn.syncbn import convert_batchnorm

            convert_batchnorm(self.model)
        self.dtype = torch.float64 if cfg.precision == "float64" else torch.float32
        if self.dtype == torch.float64 and self.amp:
            raise AffError("--amp", "mixed precision and float64 exclude each other")
        self.model.to(proc.device, dtype=self.dtype)
        self.optimizer = self._optimizer()
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        # gradient scaling guards float16's narrow range; bfloat16 needs none
        self.scaler = torch.amp.GradScaler(
            proc.device.type, enabled=self.amp and amp_dtype(proc.device) == torch.float16)

        carve = self.carve
        self.train_set = open_dataset(data, "train", seed=cfg.seed, pairing_num=cfg.pairing_num,
                                      num_points=self.num_points,
                                      view=carve.train if carve else None)
        self.val_set = open_dataset(data, "train" if carve else self.val_split, seed=cfg.seed,
                                    num_points=self.num_points,
                                    view=carve.val if carve else None)
        if carve is not None:
            self._note("note", f"validating on {carve.describe(cfg.val_from_train)}")
        self.sampler = D.GlobalBatchSampler(len(self.train_set), cfg.batch_size, proc,
                                            shuffle=True, seed=cfg.seed, drop_last=True)
        if self.sampler.num_batches() == 0:
            raise AffError(data, f"the train split has {len(self.train_set)} samples, fewer "
                           f"than one batch of {cfg.batch_size}", hint="lower --batch-size")

        self.last_record: dict[str, Any] | None = None
        self.fault_steps = _fault_steps()
        self.run_dir = self._run_dir(resume)
        if resume is not None:
            self._resume(resume)
        self.tb = (tracking.open_log(self.run_dir, cfg.tensorboard, self.state.global_step)
                   if proc.main else None)
        if self.tb is not None:
            self._note("note", f"TensorBoard: tensorboard --logdir {self.tb.dir}")
        step = TrainStep(self.model)
        self.step_module: nn.Module = step
        if proc.distributed:
            ids = [proc.device.index] if proc.device.type == "cuda" else None
            # find_unused_parameters: the Linear biases before a training-mode BatchNorm take
            # no part in the loss (BatchNorm cancels them), and DDP must not wait for them
            self.step_module = nn.parallel.DistributedDataParallel(
                step, device_ids=ids, find_unused_parameters=True)

    # ------------------------------------------------------------------ setup helpers

    @property
    def selects_on_test(self) -> bool:
        """Whether best.pt is chosen on the split the final test scores."""
        return bool(self.cfg.test_split) and self.val_split == self.cfg.test_split

    def _note(self, kind: str, message: str) -> None:
        if self.proc.main and kind in self.hooks:
            self.hooks[kind](message)

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = self.model.optimizer_groups(self.cfg.lr, self.cfg.weight_decay, self.cfg.text_lr)
        groups = [g for g in groups if g["params"]]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=0.9)
        cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=self.cfg.lr, betas=(0.9, 0.999), eps=1e-8)

    def _run_dir(self, resume: Path | None) -> Path:
        if resume is not None:
            return resume
        path = None
        if self.proc.main:
            if self.cfg.out:
                path = Path(self.cfg.out)
                if path.exists() and any(path.iterdir()):
                    raise AffError(path, "output folder exists and is not empty",
                                   hint="choose another --out, or --resume it")
                path.mkdir(parents=True, exist_ok=True)
            else:
                path = ckpt.new_run_dir("runs", self.cfg.model, self.cfg.setting)
            self.cfg.out = str(path)
            # created exclusively: of two runs started at once with the same --out, one
            # takes the folder and the other stops here (exit 2)
            try:
                with atomic_output(path / "config.yaml", force=False) as tmp:
                    tmp.write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            except DiskFullError:
                raise
            except AffError:
                raise AffError(path, "output folder exists and is not empty (another run "
                               "started in it)", hint="choose another --out") from None
        path = D.broadcast(self.proc, str(path) if path else None)
        self.cfg.out = path
        return Path(path)

    def _resume(self, run_dir: Path) -> None:
        doc = ckpt.load(run_dir / ckpt.LAST)
        if doc["model_type"] != self.cfg.model:
            raise AffError(run_dir / ckpt.LAST, f"holds a {doc['model_type']} model, not "
                           f"{self.cfg.model}")
        self._check_same_data(doc.get("data") or {}, run_dir / ckpt.LAST)
        load_state(self.model, doc["model"], run_dir / ckpt.LAST)
        try:
            self.optimizer.load_state_dict(doc["optimizer"])
            if doc.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(doc["scaler"])
        except (ValueError, KeyError) as exc:
            raise AffError(run_dir / ckpt.LAST, f"optimizer state does not fit ({exc})") from None
        s = doc["state"]
        self.state = State(epoch=int(s["epoch"]), step=int(s["step"]),
                           global_step=int(s["global_step"]),
                           # (runs before select_by kept the best aIoU under this key)
                           best_score=float(s.get("best_score", s.get("best_aiou"))),
                           best_epoch=int(s["best_epoch"]),
                           step_losses=[float(x) for x in s["step_losses"]],
                           skipped=int(s.get("skipped", 0)),
                           skipped_total=int(s.get("skipped_total", 0)))
        self.last_record = doc.get("record")
        if self.proc.main:
            # a killed process leaves the temporary file of the write it was in (a whole
            # checkpoint's size); its rename never came, so it is garbage
            for stale in run_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            self._repair_metrics(run_dir)
        rng = doc["rng"]
        trained_with = len(rng) if isinstance(rng, list) else 1
        if trained_with != self.proc.world:
            raise AffError(run_dir / ckpt.LAST, f"this run trained with {trained_with} "
                           f"process(es); resume it with --nproc {trained_with}")
        ckpt.set_rng_state(rng[self.proc.rank] if isinstance(rng, list) else rng)
        self._note("note", f"resuming {run_dir} at epoch {self.state.epoch + 1}"
                   + (f", batch {self.state.step + 1}" if self.state.step else ""))

    def _check_same_data(self, recorded: dict[str, Any], source: Path) -> None:
        """A resumed run must read the file it started on: the size and fingerprint recorded
        at the start, else exit 2 (unless --force)."""
        now = self.data_identity
        changed = [k for k in ("size", "fingerprint") if k in recorded and recorded[k] != now[k]]
        if not changed:
            return
        what = (f"size {recorded['size']} -> {now['size']} bytes" if "size" in changed
                else "same size, other contents")
        if self.force:
            self._note("warn", f"{self.cfg.data} changed since this run started ({what}); "
                       "resuming on it anyway (--force)")
            return
        raise AffError(self.cfg.data, f"changed since the run in {source.parent} started "
                       f"({what}, recorded in {source.name}); resuming on other data would "
                       "not continue the same run",
                       hint="pass --force to resume on it anyway, or restore the file")

    def _repair_metrics(self, run_dir: Path) -> None:
        """metrics.jsonl as of last.pt: a torn last line (a kill while appending) dropped,
        lines of epochs after the checkpoint dropped, the checkpoint's own epoch line added
        when a kill came between the two writes; then results.csv / .png redrawn."""
        path = run_dir / "metrics.jsonl"
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        kept: list[str] = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and 0 < int(record.get("epoch", 0)) <= self.state.epoch:
                kept.append(json.dumps(record))
        last = self.last_record
        if last is not None and int(last.get("epoch", 0)) == self.state.epoch and not any(
                json.loads(x)["epoch"] == self.state.epoch for x in kept):
            kept.append(json.dumps(last))
        text = "".join(x + "\n" for x in kept)
        if not path.is_file() or text != path.read_text(errors="replace"):
            with atomic_output(path) as tmp:
                tmp.write_text(text)
            self._note("note", f"repaired {path.name}: {len(kept)} epoch line(s) as of "
                       f"{ckpt.LAST}")
            try:
                write_results(run_dir)
            except Exception as exc:  # noqa: BLE001 (pictures must not stop a resume)
                self._note("warn", f"results.csv / results.png not redrawn: {exc}")

    # ------------------------------------------------------------------ checkpoints

    def _payload(self) -> dict[str, Any]:
        s = self.state
        # every process's RNG state: each draws its own dropout masks
        rngs = D.gather(self.proc, ckpt.rng_state())
        return {
            "model_type": self.cfg.model,
            "model_config": self.model.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "state": {"epoch": s.epoch, "step": s.step, "global_step": s.global_step,
                      "best_score": s.best_score, "best_epoch": s.best_epoch,
                      "step_losses": list(s.step_losses), "skipped": s.skipped,
                      "skipped_total": s.skipped_total},
            # the last finished epoch's metrics.jsonl line: written after the checkpoint,
            # so a kill in between loses it from the file but not from here
            "record": jsonable(self.last_record) if self.last_record is not None else None,
            "rng": rngs if self.proc.distributed else (rngs[0] if rngs else None),
            "train_config": self.cfg.to_dict(),
            "data": {"path": self.cfg.data, "dataset": self.info.dataset,
                     "setting": self.info.setting, "view": self.info.view,
                     **self.data_identity},
        }

    def _save(self, names: tuple[str, ...]) -> None:
        payload = self._payload()  # collective: every process takes part
        if self.proc.main:
            ckpt.save(self.run_dir / names[0], payload)
            for name in names[1:]:  # the same bytes: a hard link, swapped in atomically
                ckpt.link_copy(self.run_dir / names[0], self.run_dir / name)
            if ckpt.BEST in names:
                ckpt.save_inference(self.run_dir / ckpt.INFERENCE, payload,
                                    self.run_dir / ckpt.BEST)
        D.barrier(self.proc)

    # ------------------------------------------------------------------ the loop

    def _set_lr(self, epoch: int, step: int) -> float:
        lr = learning_rate(self.cfg, epoch, step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * lr / self.cfg.lr
        return lr

    def _loader(self) -> DataLoader:
        # the loader's own generator: worker seeds must not draw from the global RNG, or a
        # run resumed mid-epoch would see different dropout masks from there on
        gen = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(self.train_set, batch_sampler=self.sampler,
                          num_workers=self.cfg.workers, generator=gen,
                          worker_init_fn=_ignore_stop_signals if self.cfg.workers else None,
                          pin_memory=self.proc.device.type == "cuda")

    def _train_step(self, batch: dict[str, Any]) -> float | None:
        """One optimizer step; None when it was skipped for a non-finite loss or gradient
        (--skip-nonfinite), NonFiniteError when no more may be skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.proc.device, self.amp):
            loss = self.step_module(to_device(batch, self.proc.device, self.dtype))
        if self.state.global_step + 1 in self.fault_steps:
            loss = loss * float("nan")
        # agreed before backward: under DDP a process that skipped it would leave the
        # others waiting in the gradient all-reduce
        if D.any_process(self.proc, not bool(torch.isfinite(loss))):
            return self._non_finite("loss", float(loss.detach()))
        self.scaler.scale(loss).backward()
        # (with a GradScaler, fp16 overflow is routine: the scaler skips those steps itself)
        if not self.scaler.is_enabled():
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not bool(torch.isfinite(norm)):  # all-reduced already: the same everywhere
                return self._non_finite("gradient", float(norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return D.mean_over_processes(self.proc, float(loss.detach()))

    def _non_finite(self, what: str, value: float) -> None:
        s, cfg = self.state, self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        where = f"epoch {s.epoch + 1}, step {s.step + 1} (global step {s.global_step + 1})"
        if s.skipped_total < cfg.skip_nonfinite:
            s.skipped += 1
            s.skipped_total += 1
            self._note("warn", f"the {what} became {value} at {where}: step skipped "
                       f"({s.skipped_total} of --skip-nonfinite {cfg.skip_nonfinite})")
            return None
        last = self.run_dir / ckpt.LAST
        kept = (f"the last good checkpoint is {last}" if last.is_file()
                else "no checkpoint was written yet")
        raise NonFiniteError(cfg.out, f"training stopped: the {what} became {value} at "
                             f"{where}; {kept}",
                             hint="lower --lr or check the data; --skip-nonfinite K skips up "
                             "to K such steps; --resume continues from the checkpoint")

    def run(self) -> dict[str, Any]:
        # The first stop signal (Ctrl-C, SIGTERM, SIGUSR1) finishes the current batch, saves
        # last.pt and stops; a second one stops at once.
        stop = {"signal": 0}

        def on_signal(signum: int, frame: Any) -> None:
            if stop["signal"]:
                raise KeyboardInterrupt
            stop["signal"] = signum
            again = "Ctrl-C" if signum == signal.SIGINT else STOP_SIGNALS[signum]
            self._note("note", f"{STOP_SIGNALS[signum]}: saving last.pt after this batch "
                       f"({again} again to stop at once)")

        previous = {}
        for signum in STOP_SIGNALS:
            try:
                previous[signum] = signal.signal(signum, on_signal)
            except ValueError:  # not the main thread: leave the handlers alone
                break
        try:
            return self._run(stop)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.tb is not None:
                self.tb.close()

    def _stopping(self, stop: dict[str, int]) -> int:
        """The stop signal any process received (0: none); the same on every process."""
        if not self.proc.distributed:
            return stop["signal"]
        return int(D.max_over_processes(self.proc, stop["signal"]))

    def _run(self, stop: dict[str, int]) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        per_epoch = self.sampler.num_batches()
        if cfg.max_batches:
            per_epoch = min(per_epoch, cfg.max_batches)
        while s.epoch < cfg.epochs:
            epoch = s.epoch
            self.train_set.set_epoch(epoch)
            self.sampler.set_epoch(epoch, start=s.step)
            self.model.train()
            if "epoch_start" in self.hooks and self.proc.main:
                self.hooks["epoch_start"](epoch, per_epoch, s.step)
            t0, seen = time.perf_counter(), 0
            for batch in self._loader():
                if s.step >= per_epoch:
                    break
                lr = self._set_lr(epoch, s.step)
                loss = self._train_step(batch)
                if loss is not None:
                    s.step_losses.append(loss)
                s.step += 1
                s.global_step += 1
                seen += cfg.batch_size
                if self.tb is not None and loss is not None:
                    self.tb.step(s.global_step, loss, lr)
                if "step" in self.hooks and self.proc.main:
                    self.hooks["step"](epoch, s.step, per_epoch, math.nan if loss is None
                                       else loss, lr,
                                       seen / max(time.perf_counter() - t0, 1e-9))
                signum = self._stopping(stop)
                if signum:
                    self._save((ckpt.LAST,))
                    raise Interrupted(self.run_dir, signum)
                if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and \
                        s.step < per_epoch:
                    self._save((ckpt.LAST,))  # (the epoch's end saves anyway)
            record = self._end_epoch(epoch, t0, seen)
            if "epoch_end" in self.hooks and self.proc.main:
                self.hooks["epoch_end"](record)
            signum = self._stopping(stop)
            if signum:
                raise Interrupted(self.run_dir, signum)
        return self._finish()

    def _end_epoch(self, epoch: int, t0: float, seen: int) -> dict[str, Any]:
        s, cfg = self.state, self.cfg
        train_seconds = time.perf_counter() - t0
        eval_batch = cfg.eval_batch_size or cfg.batch_size
        pred = predict(self.model, self.val_set, eval_batch, self.proc, workers=cfg.workers,
                       amp=self.amp, dtype=self.dtype, limit=cfg.max_val_batches * eval_batch)
        val = score(pred)["overall"] if pred is not None else None
        metric = cfg.select_by
        value = D.broadcast(self.proc, val[metric] if val else None)
        improved = better(metric, value, s.best_score)
        record = {
            "epoch": epoch + 1,
            "train_loss": sum(s.step_losses) / max(len(s.step_losses), 1),
            "lr": learning_rate(cfg, epoch, 0),
            "val_split": self.val_split,
            "val": val,
            "best": improved,
            "select_by": metric,
            "samples_per_s": seen / max(train_seconds, 1e-9),
            "seconds": time.perf_counter() - t0,
            "step_losses": list(s.step_losses),
            "nonfinite_skipped": s.skipped,
        }
        if improved:
            s.best_score, s.best_epoch = value, epoch + 1
        s.epoch, s.step, s.step_losses, s.skipped = epoch + 1, 0, [], 0
        self.last_record = record
        self._save((ckpt.LAST, ckpt.BEST) if improved else (ckpt.LAST,))
        if self.proc.main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(jsonable(record)) + "\n")
            try:
                write_results(self.run_dir)
            except Exception as exc:  # noqa: BLE001 (a picture must not end a long training)
                self._note("warn", f"results.csv / results.png not written: {exc}")
            if self.tb is not None:
                self.tb.epoch(record, s.global_step)
        return record

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        summary: dict[str, Any] = {"run_dir": str(self.run_dir), "epochs": self.state.epoch,
                                   "best_epoch": self.state.best_epoch,
                                   "select_by": cfg.select_by,
                                   "best_val": self.state.best_score, "test": None}
        if cfg.test_split and (self.run_dir / ckpt.BEST).is_file():
            best = ckpt.load(self.run_dir / ckpt.BEST)
            load_state(self.model, best["model"], self.run_dir / ckpt.BEST)
            test_set = open_dataset(cfg.data, cfg.test_split, seed=cfg.seed,
                                    num_points=self.num_points)
            pred = predict(self.model, test_set, cfg.eval_batch_size or cfg.batch_size,
                           self.proc, workers=cfg.workers, amp=self.amp, dtype=self.dtype,
                           votes=cfg.votes)
            if pred is not None:
                result = score(pred)
                result.update(split=cfg.test_split, votes=cfg.votes,
                              best_epoch=self.state.best_epoch, select_by=cfg.select_by,
                              selected_on=self.val_split)
                summary["test"] = result
                write_json(self.run_dir / "test_metrics.json", result)
                if cfg.plots:
                    summary["plots"] = self._test_plots(pred, test_set, result)
                if self.tb is not None:
                    self.tb.test(result["overall"], self.state.global_step)
        return summary

    def _test_plots(self, pred: Any, test_set: Any, result: dict[str, Any]) -> str | None:
        """The final test's charts and gallery in RUN/plots/<split>/ (and the gallery in
        TensorBoard); a failure is a warning, never the end of a finished training."""
        cfg = self.cfg
        out = self.run_dir / "plots" / str(cfg.test_split)
        title = (f"{cfg.model} on {self.info.dataset} {self.info.setting} {cfg.test_split}, "
                 f"best epoch {self.state.best_epoch} by {cfg.select_by}"
                 + (f", {cfg.votes} votes" if cfg.votes > 1 else ""))
        try:
            paths = write_eval_plots(out, pred, test_set, result, constant_baseline(pred),
                                     title)
            if self.tb is not None:
                self.tb.images([p for p in paths if p.parent.name == "gallery"],
                               self.state.global_step)
        except Exception as exc:  # noqa: BLE001
            self._note("warn", f"plots not drawn in {out}: {exc}")
            return None
        return str(out)
