"""Mapping official (reference) state dicts onto affcli's parameter names.

The reference PointNet++ keeps each shared-MLP layer as a 1x1 Conv2d/Conv1d
(`conv_blocks[i][j]`, `mlp_convs[j]`) with its BatchNorm (`bn_blocks[i][j]`, `mlp_bns[j]`);
affcli keeps a Linear and a BatchNorm1d (`scales[i].linears[j]`, `mlp.linears[j]`). Weights
are the same numbers with the trailing 1x1 kernel axes dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from affcli.errors import AffError
from affcli.models.config import load_state_dict_file

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def pointnet_key(key: str) -> str | None:
    """A reference PointNet++ key in affcli naming, or None if it is not one."""
    m = re.fullmatch(r"(.*sa\d)\.conv_blocks\.(\d+)\.(\d+)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.scales.{m[2]}.linears.{m[3]}.{m[4]}"
    m = re.fullmatch(r"(.*sa\d)\.bn_blocks\.(\d+)\.(\d+)\.(\w+)", key)
    if m and m[4] in _BN_FIELDS:
        return f"{m[1]}.scales.{m[2]}.norms.{m[3]}.{m[4]}"
    m = re.fullmatch(r"(.*fp\d)\.mlp_convs\.(\d+)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mlp.linears.{m[2]}.{m[3]}"
    m = re.fullmatch(r"(.*fp\d)\.mlp_bns\.(\d+)\.(\w+)", key)
    if m and m[3] in _BN_FIELDS:
        return f"{m[1]}.mlp.norms.{m[2]}.{m[3]}"
    return None


def official_key(model_cls: type, key: str) -> str | None:
    """Our key for an official checkpoint key of `model_cls` (None for keys dropped on
    purpose), by the rules the model class declares (`official_key_rules`,
    `official_dropped_prefixes`), then the shared PointNet++ renaming."""
    if key.startswith(tuple(model_cls.official_dropped_prefixes)):
        return None
    for pattern, repl in model_cls.official_key_rules or ():
        if re.match(pattern, key):
            key = re.sub(pattern, repl, key)
            break
    return pointnet_key(key) or key


def require_mapping(name: str) -> None:
    """AffError unless the registered model `name` declares how official keys map."""
    from affcli import models

    if models.model_class(name).official_key_rules is None:
        mapped = [n for n in models.available()
                  if models.model_class(n).official_key_rules is not None]
        raise AffError("MODEL", f"no official-checkpoint mapping for {name!r} (models with "
                       f"one: {', '.join(mapped)})")


def key_map(name: str) -> Callable[[str], str | None]:
    """The official-key mapping of the registered model `name`."""
    from affcli import models

    model_cls = models.model_class(name)
    return lambda key: official_key(model_cls, key)


def convert_state_dict(state: dict[str, torch.Tensor], key_fn: Callable[[str], str | None]
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the reference keys dropped on purpose). 1x1 kernels lose their
    trailing axes; `module.` prefixes (DistributedDataParallel) are removed."""
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        new = key_fn(key)
        if new is None:
            dropped.append(key)
            continue
        if value.dim() in (3, 4) and all(s == 1 for s in value.shape[2:]) and (
                "linears" in new):
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out, dropped


def load_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file (see `load_state_dict_file`)."""
    return load_state_dict_file(path, "checkpoint")


def from_reference_state_dict(name: str, state: dict[str, torch.Tensor], **overrides: Any
                              ) -> torch.nn.Module:
    """Our model `name` holding an official state dict's weights; every reference key must
    map onto one of ours with the same shape, else AffError names the offenders (see
    `import_reference_state_dict`, which also returns notes)."""
    return import_reference_state_dict(name, state, **overrides)[0]


def import_reference_state_dict(name: str, state: dict[str, torch.Tensor], **overrides: Any
                                ) -> tuple[torch.nn.Module, list[str]]:
    """(our model `name` with the official weights, notes for the user). A checkpoint with
    none of the keys under one of the model's `official_optional_prefixes` keeps the weights
    the model was built with (a note says so: e.g. a frozen language model loaded from the
    directory `language_model` names); one with some of them must hold them all."""
    from affcli import models
    from affcli.models.config import load_state

    name = name.lower()
    require_mapping(name)
    converted, _ = convert_state_dict(state, key_map(name))
    model = models.build(name, **overrides)
    own = model.state_dict()
    notes: list[str] = []
    kept: set[str] = set()
    for prefix, field in type(model).official_optional_prefixes.items():
        if not any(k.startswith(prefix) for k in converted):
            taken = {k for k in own if k.startswith(prefix)}
            kept |= taken
            notes.append(f"the checkpoint holds no {prefix.rstrip('.')} weights (the official "
                         f"code saves only trained parameters); these {len(taken)} tensors "
                         f"come from {field}={getattr(model.config, field, '?')}, which must "
                         "be the model it was trained with")
    try:
        load_state(model, {**{k: own[k] for k in kept}, **converted}, "checkpoint",
                   labels=("our keys the checkpoint lacks", "keys with no counterpart",
                           "shape mismatches"), what=f"does not match {name}")
    except AffError as exc:
        hint = model.official_mismatch_hint(converted)
        raise AffError(exc.file, exc.reason + (f" ({hint})" if hint else "")) from None
    return model, notes
