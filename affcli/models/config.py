"""Model configs and the `save_pretrained` / `from_pretrained` round trip.

A pretrained directory holds `config.json` (the config dataclass plus the model's registry
name) and `model.safetensors` (the state dict), as Hugging Face does. Loading never unpickles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from affcli.errors import AffError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

C = TypeVar("C", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    """Base of every model's config: plain, JSON-serialisable fields only."""

    model_type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str | Path = "config") -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AffError(source, f"unknown {cls.model_type} config field(s): "
                           f"{', '.join(unknown)} (known: {', '.join(sorted(known))})")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in data.items():
            # JSON has no tuples; restore them where the dataclass declares a tuple default
            default = fields[key].default
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            values[key] = value
        return cls(**values)

    def replace(self: C, **overrides: Any) -> C:
        return self.from_dict({**self.to_dict(), **overrides}, source="overrides")


def _atomic_write(path: Path, write: Any) -> None:
    from affcli.fileio import atomic_output

    with atomic_output(path) as tmp:
        write(tmp)


def save_pretrained(model: torch.nn.Module, config: ModelConfig, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into `directory` (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"model_type": config.model_type, **config.to_dict()}
    _atomic_write(directory / CONFIG_NAME,
                  lambda p: Path(p).write_text(json.dumps(doc, indent=2) + "\n"))
    # safetensors refuses shared or non-contiguous storage; clone each tensor to be safe
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, p))
    return directory


def read_config(directory: str | Path) -> tuple[str, dict[str, Any]]:
    """(model_type, the remaining fields) of a pretrained directory's config.json."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AffError(directory, f"not a pretrained model directory (no {CONFIG_NAME})")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AffError(path, f"malformed JSON ({exc})") from None
    if not isinstance(doc, dict) or "model_type" not in doc:
        raise AffError(path, "no 'model_type' field")
    model_type = doc.pop("model_type")
    return str(model_type), doc


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AffError(directory, f"no {WEIGHTS_NAME}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AffError(path, f"unreadable safetensors file ({exc})") from None


# the random initialisers a module's constructor may call; the constant ones (zeros_,
# ones_, ...) stay: libraries fill non-persistent buffers with them (transformers 5 its
# token-type ids), and a checkpoint does not hold those
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
                 "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


_pending: list[bool] = []


@contextlib.contextmanager
def weights_to_be_loaded() -> Iterator[None]:
    """Build a model whose every parameter and buffer is loaded right after (a checkpoint,
    strictly): the random initialisation is skipped (0.3 s of a 2-core machine's start-up
    for PointRefer, all of it overwritten). Only for that: parameters drawn at random hold
    whatever memory they were given until loaded."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}

    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    for name in _INITIALISERS:
        setattr(torch.nn.init, name, keep)
    _pending.append(True)
    try:
        yield
    finally:
        _pending.pop()
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def weights_pending() -> bool:
    """Inside `weights_to_be_loaded`: a constructor need not load pretrained weights either
    (a backbone's), the checkpoint replaces them."""
    return bool(_pending)


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path, *,
               what: str = "weights do not fit the model",
               labels: tuple[str, str, str] = ("missing", "unexpected", "wrong shape"),
               assign: bool = False) -> None:
    """Load strictly; else AffError(`source`, what; then the missing, unexpected and
    mis-shaped keys, each part named by `labels`). `assign`: the model takes the tensors of
    `state` as its own instead of copying them (a model built by `weights_to_be_loaded`
    from a memory-mapped file: nothing is copied until used)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in zip(labels, (missing, unexpected, shapes), strict=True):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise AffError(source, f"{what}; " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=assign)


def load_state_dict_file(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a torch file, loaded with weights_only=True on the CPU (nothing in
    the file can run code): bare, or wrapped as {'model': ...} (the reference training
    scripts) or {'state_dict': ...}; DistributedDataParallel's `module.` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise AffError(path, f"{what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: a bad file
        raise AffError(path, f"not a loadable {what} ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AffError(path, "expected a state dict (name -> tensor), or {'model': state dict}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
