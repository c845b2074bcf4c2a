"""Training checkpoints and run folders.

A checkpoint is one torch file holding only tensors and plain containers, so it loads with
`weights_only=True` (nothing in it can run code): the model's registry name, config and
weights, the optimizer and AMP scaler states, where training stood (epoch, step), the RNG
states of torch, numpy and Python, the best validation aIoU so far and the resolved training
config. Files are written to a temporary name and renamed, so a crash never leaves half a
checkpoint.

A run folder is `runs/<model>/<setting>-N/` with `config.yaml`, `last.pt`, `best.pt`,
`best.safetensors`, `metrics.jsonl` and, at the end, `test_metrics.json`.

`best.safetensors` is the inference form of `best.pt`: the model's weights only (no optimizer
state, a third to a half of the size), memory-mapped on load, with the model's name and
config and the run's training config and data in its metadata. `predict`, `eval` and
`export` read it when it belongs to the `best.pt` beside it (it records that file's size and
modification time) or when `best.pt` is gone (a run folder shared without it).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affcli.errors import AffError
from affcli.fileio import atomic_output, next_numbered_dir

FORMAT = "affcli-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"
INFERENCE = "best.safetensors"
WEIGHTS_FORMAT = "affcli-weights"


def save(path: Path, payload: dict[str, Any]) -> None:
    """Written to a temporary file, synced to the disk, renamed: a kill at any moment leaves
    the previous checkpoint or this one. Through a Python file object, so a full disk is an
    OSError that `atomic_output` names (torch's own writer would lose the errno)."""
    with atomic_output(path, durable=True) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
        _pause_before_rename(path)


PAUSE_ENV = "AFFCLI_TEST_PAUSE_BEFORE_RENAME"  # test-only: seconds between write and rename


def _pause_before_rename(path: Path) -> None:
    """Test-only: widen the moment between a checkpoint's write and its rename, so a test
    can kill a process inside it."""
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        import time

        marker = path.with_name(f".{path.name}.writing")
        marker.touch()
        time.sleep(seconds)
        marker.unlink(missing_ok=True)


def load(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint written by `save`, or exit-2 errors naming the file. `mmap`: tensors
    are read from the file as they are used (a quarter of the time when only the model's
    weights are needed)."""
    path = Path(path)
    if not path.is_file():
        raise AffError(path, "checkpoint not found")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # any failure to unpickle means a bad file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise AffError(path, f"not a readable checkpoint ({type(exc).__name__}: {first})"
                       ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise AffError(path, "not an affcli training checkpoint",
                       hint="official checkpoints are converted with `affcli import-checkpoint`")
    if int(doc.get("version", 0)) > VERSION:
        raise AffError(path, f"checkpoint version {doc['version']} is newer than this affcli")
    for key in ("model_type", "model_config", "model"):
        if key not in doc:
            raise AffError(path, f"checkpoint lacks {key!r} (truncated or foreign file)")
    return doc


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def save_inference(path: Path, payload: dict[str, Any], checkpoint: Path) -> None:
    """The weights of `payload` (a checkpoint's contents) as safetensors, stamped with the
    checkpoint file they belong to (written first: a kill in between leaves a stale file,
    which the stamp tells apart)."""
    from safetensors.torch import save_file

    from affcli.fileio import jsonable

    # safetensors refuses tensors that share storage (tied weights): one copy each
    state = {k: v.detach().cpu().contiguous().clone() for k, v in payload["model"].items()}
    meta = {"format": WEIGHTS_FORMAT, "version": str(VERSION),
            "model_type": str(payload["model_type"]),
            "model_config": json.dumps(jsonable(payload["model_config"])),
            "train_config": json.dumps(jsonable(payload.get("train_config") or {})),
            "data": json.dumps(jsonable(payload.get("data") or {})),
            "checkpoint": f"{checkpoint.name}:{_stamp(checkpoint)}"}
    with atomic_output(path, durable=True) as tmp:
        save_file(state, str(tmp), metadata=meta)


def inference_file(run_dir: Path) -> Path | None:
    """The run's `best.safetensors` when it is current: it belongs to the `best.pt` beside
    it, or that file is gone."""
    path, best = run_dir / INFERENCE, run_dir / BEST
    if not path.is_file():
        return None
    if not best.is_file():
        return path
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            stamp = (f.metadata() or {}).get("checkpoint", "")
    except Exception:  # unreadable: best.pt is there to fall back on
        return None
    return path if stamp == f"{BEST}:{_stamp(best)}" else None


def load_inference(path: Path) -> dict[str, Any]:
    """A `save_inference` file as a checkpoint document without optimizer or RNG state
    (model_type, model_config, model, train_config, data); exit-2 errors naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != WEIGHTS_FORMAT:
                raise AffError(path, "not an affcli weights file (no affcli metadata); a "
                               "pretrained directory holds model.safetensors with config.json")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        doc = {k: json.loads(meta[k]) for k in ("model_config", "train_config", "data")}
    except AffError:
        raise
    except Exception as exc:  # a torn or foreign file
        raise AffError(path, f"not a readable weights file ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return {"format": WEIGHTS_FORMAT, "model_type": meta.get("model_type", ""), **doc,
            "model": state}


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    doc: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        doc["cuda"] = torch.cuda.get_rng_state_all()
    return doc


def set_rng_state(doc: dict[str, Any]) -> None:
    torch.set_rng_state(doc["torch"])
    n = doc["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = doc["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in doc and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(doc["cuda"])


def new_run_dir(root: str | Path, model: str, setting: str) -> Path:
    """runs/<model>/<setting>-N for the next free N (created, so two runs never share)."""
    return next_numbered_dir(Path(root) / model, setting)


def find_checkpoint(path: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file from a run folder (best.pt, else last.pt) or the file itself."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise AffError(path, f"no {BEST} or {LAST} in this folder (not a training run?)")
    if not path.exists():
        raise AffError(path, "no such run folder or checkpoint")
    return path


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any] | None, Path]:
    """(model, checkpoint or None, file used) from a run folder, a checkpoint file, or a
    pretrained directory (config.json + model.safetensors). The model is on the CPU in eval
    mode."""
    import warnings

    from affcli import models
    from affcli.models.config import CONFIG_NAME, load_state, weights_to_be_loaded

    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file() and not any(
            (path / n).is_file() for n in (BEST, LAST, INFERENCE)):
        return models.from_pretrained(path).eval(), None, path
    weights = inference_file(path) if path.is_dir() else (
        path if path.suffix == ".safetensors" and path.is_file() else None)
    if weights is not None:
        ckpt, doc = weights, load_inference(weights)
    else:
        ckpt = find_checkpoint(path)
        doc = load(ckpt, mmap=True)
    fields = dict(doc["model_config"])
    # the checkpoint holds the trained ResNet weights: the file it started from (maybe gone
    # by now) is not needed, and the "random init" warning would be wrong
    if "resnet18_weights" in fields:
        fields["resnet18_weights"] = None
    with warnings.catch_warnings(), weights_to_be_loaded():
        warnings.filterwarnings("ignore", message="ResNet18 starts from random weights")
        model = models.build(str(doc["model_type"]), **fields)
    load_state(model, doc["model"], ckpt, assign=True)
    return model.eval(), doc, ckpt


def link_copy(src: Path, dst: Path) -> None:
    """`dst` becomes a copy of `src` atomically: a hard link when the file system allows
    (no second write of a large file), else a byte copy; then renamed over `dst`."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
