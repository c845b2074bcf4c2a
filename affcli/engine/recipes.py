"""Training configurations: every option of `affcli train`, resolved in one order.

    field defaults  <  the model's paper recipe (`train_recipe`)  <  --config FILE.yaml
    <  options typed on the command line

The resolved config is written into the run folder (`config.yaml`) and into every checkpoint,
so a run can be resumed or evaluated without retyping anything.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from affcli.errors import AffError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("step", "cosine", "warmup_cosine", "constant")
# what may choose best.pt; MAE is the one where lower is better
SELECT_METRICS = ("aiou", "auc", "sim", "mae")


@dataclasses.dataclass
class TrainConfig:
    model: str = ""
    data: str | None = None  # prepared HDF5 file; default data/<dataset>_<setting>.h5
    setting: str = "seen"
    epochs: int = 50
    batch_size: int = 16  # global: split evenly over the processes of a distributed run
    lr: float = 1e-4
    text_lr: float | None = None  # the text encoder's rate (PointRefer), else lr
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam, adamw, or sgd (momentum 0.9)
    scheduler: str = "constant"
    step_size: int = 10  # step: epochs per decay
    gamma: float = 0.5  # step: decay factor
    min_lr: float = 0.0  # cosine / warmup_cosine: final rate
    warmup_lr: float = 1e-6  # warmup_cosine: first rate
    warmup_steps: int = 0  # warmup_cosine: steps of linear warmup within the first epoch
    pairing_num: int = 1  # PIAD/AGPIL: point clouds per training image
    num_points: int | None = None  # subsample clouds to this many points (None: the file's)
    seed: int = 42
    workers: int = 2
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA, off on the CPU
    precision: str = "float32"  # or float64: slow, for numerical checks (see docs/training.md)
    eval_batch_size: int | None = None  # default: batch_size
    max_batches: int = 0  # per epoch; 0 = all (for smoke runs and benchmarks)
    max_val_batches: int = 0  # per validation; 0 = all (smoke runs; never the final test)
    val_split: str | None = None  # default: val when the file has one, else test
    val_from_train: float = 0.0  # > 0: validate on this fraction carved from train instead
    test_split: str | None = "test"  # evaluated with the best checkpoint at the end
    select_by: str = "aiou"  # the validation metric that chooses best.pt
    votes: int = 1  # the final test's passes averaged (seeded, random FPS starts)
    plots: bool = True  # the final test's charts and gallery in RUN/plots/<split>/
    tensorboard: bool = True  # log to RUN/tb/ when the tensorboard package is installed
    checkpoint_every: int = 0  # > 0: also save last.pt every this many steps of an epoch
    skip_nonfinite: int = 0  # steps with a NaN/inf loss or gradient skipped before stopping
    model_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # config overrides
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path) -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise AffError(source, f"unknown option(s) {', '.join(unknown)} (known: "
                           f"{', '.join(sorted(known))})")
        return cls(**data)

    def validate(self, source: str | Path = "options") -> TrainConfig:
        checks = [
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.lr > 0, "lr", "must be positive"),
            (self.text_lr is None or self.text_lr >= 0, "text_lr", "must be >= 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}"),
            (self.scheduler in SCHEDULERS, "scheduler", f"must be one of {SCHEDULERS}"),
            (self.precision in ("float32", "float64"), "precision", "must be float32 or float64"),
            (self.step_size >= 1, "step_size", "must be at least 1"),
            (self.pairing_num >= 1, "pairing_num", "must be at least 1"),
            (self.num_points is None or self.num_points >= 512, "num_points",
             "must be at least 512 (the first set abstraction keeps 512 centres)"),
            (self.workers >= 0, "workers", "must be >= 0"),
            (self.max_batches >= 0, "max_batches", "must be >= 0"),
            (self.max_val_batches >= 0, "max_val_batches", "must be >= 0"),
            (0 <= self.val_from_train < 1, "val_from_train", "must be a fraction in [0, 1)"),
            (not (self.val_from_train and self.val_split), "val_from_train",
             "excludes val_split (validate on one or the other)"),
            (self.select_by in SELECT_METRICS, "select_by", f"must be one of {SELECT_METRICS}"),
            (isinstance(self.votes, int) and self.votes >= 1, "votes", "must be at least 1"),
            (self.setting in ("seen", "unseen"), "setting", "must be seen or unseen"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size",
             "must be at least 1"),
            (isinstance(self.model_config, dict), "model_config", "must be a mapping"),
            (isinstance(self.plots, bool), "plots", "must be true or false"),
            (isinstance(self.tensorboard, bool), "tensorboard", "must be true or false"),
            (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             "checkpoint_every", "must be a step count >= 0"),
            (isinstance(self.skip_nonfinite, int) and self.skip_nonfinite >= 0,
             "skip_nonfinite", "must be a count >= 0"),
        ]
        for ok, name, reason in checks:
            if not ok:
                raise AffError(source, f"{name} {reason} (got {getattr(self, name)!r})")
        return self


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The options in a YAML run config (keys as TrainConfig fields; dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise AffError(path, "config file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        record = f"line {mark.line + 1}" if mark is not None else None
        raise AffError(path, f"malformed YAML ({getattr(exc, 'problem', exc)})",
                       record=record) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise AffError(path, "expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def resolve(model: str, recipe: dict[str, Any], config_file: str | Path | None,
            cli: dict[str, Any]) -> TrainConfig:
    """Defaults < recipe < YAML < command line (only options the user gave: not None)."""
    values: dict[str, Any] = {"model": model, **recipe}
    source: str | Path = "options"
    if config_file is not None:
        from_file = read_yaml(config_file)
        if from_file.get("model", model) != model:
            raise AffError(config_file, f"is a config for {from_file['model']!r}, not {model!r}")
        values.update(from_file)
        source = config_file
    values.update({k: v for k, v in cli.items() if v is not None})
    return TrainConfig.from_dict(values, source).validate(source)


def better(metric: str, value: float | None, best: float) -> bool:
    """Whether `value` of `metric` beats `best` (a finite value beats the initial -inf/inf;
    MAE is better lower)."""
    if value is None or not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value < best if metric == "mae" else value > best


def learning_rate(cfg: TrainConfig, epoch: int, step: int) -> float:
    """The main group's rate for `step` (0-based, within the epoch) of `epoch` (0-based).

    step: lr * gamma^(epoch // step_size) (torch's StepLR stepped per epoch);
    cosine: min + (lr - min)(1 + cos(pi epoch / epochs)) / 2 (CosineAnnealingLR per epoch);
    warmup_cosine: the LAVIS schedule: in epoch 0 linear from warmup_lr to lr over
    warmup_steps steps, from epoch 1 the per-epoch cosine;
    constant: lr.
    """
    if cfg.scheduler == "step":
        return cfg.lr * cfg.gamma ** (epoch // cfg.step_size)
    cosine = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch
                                                                       / cfg.epochs))
    if cfg.scheduler == "cosine":
        return cosine
    if cfg.scheduler == "warmup_cosine":
        if epoch == 0:
            frac = step / max(cfg.warmup_steps, 1)
            return min(cfg.lr, cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * frac)
        return cosine
    return cfg.lr
