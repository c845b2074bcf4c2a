"""Mapping official (reference) state dicts onto affcli's parameter names.

The reference PointNet++ keeps each shared-MLP layer as a 1x1 Conv2d/Conv1d
(`conv_blocks[i][j]`, `mlp_convs[j]`) with its BatchNorm (`bn_blocks[i][j]`, `mlp_bns[j]`);
affcli keeps a Linear and a BatchNorm1d (`scales[i].linears[j]`, `mlp.linears[j]`). Weights
are the same numbers with the trailing 1x1 kernel axes dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from affcli.errors import AffError
from affcli.models.config import load_state_dict_file

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _pointnet_key(key: str) -> str | None:
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


_IAGNET_RULES = (
    (r"^JRA\.", "jra."),
    (r"^ARM\.cross_atten\.", "arm."),
    (r"^ARM\.fusion\.", "arm.fusion."),
    (r"^decoder\.out_head\.0\.", "out_head.fc1."),
    (r"^decoder\.out_head\.2\.", "out_head.norm."),
    (r"^decoder\.out_head\.5\.", "out_head.fc2."),
    (r"^decoder\.cls_head\.", "cls_head."),
    (r"^decoder\.(fp\d)\.", r"\1."),
)


def iagnet_key(key: str) -> str | None:
    """The affcli IAGNet key for an official IAGNet key (None for keys we do not keep)."""
    if key.startswith("img_encoder.model.fc."):
        return None  # the ResNet classifier is never used
    for pattern, repl in _IAGNET_RULES:
        if re.match(pattern, key):
            key = re.sub(pattern, repl, key)
            break
    return _pointnet_key(key) or key


def convert_state_dict(state: dict[str, torch.Tensor], key_fn: object
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the reference keys dropped on purpose). 1x1 kernels lose their
    trailing axes; `module.` prefixes (DistributedDataParallel) are removed."""
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state.items():
        key = key.removeprefix("module.")
        new = key_fn(key)  # type: ignore[operator]
        if new is None:
            dropped.append(key)
            continue
        if value.dim() in (3, 4) and all(s == 1 for s in value.shape[2:]) and (
                "linears" in new):
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out, dropped


_LMAFFORDANCE3D_RULES = (
    (r"^fusion\.mlp\.", "fusion.to_common."),
    (r"^fusion\.img_attention\.", "fusion.i_atten."),
    (r"^fusion\.point_attention\.", "fusion.p_atten."),
    (r"^fusion\.joint_attention\.", "fusion.joint_atten."),
    (r"^affordance_decoder\.cross_atten\.", "affordance_decoder."),
    (r"^head\.out_head\.0\.", "out_head.fc1."),
    (r"^head\.out_head\.1\.", "out_head.norm."),
    (r"^head\.out_head\.3\.", "out_head.fc2."),
    (r"^head\.(fp\d)\.", r"\1."),
    (r"^llm_model\.", "language_model."),
)


def lmaffordance3d_key(key: str) -> str | None:
    """The affcli LMAffordance3D key for an official one (None for keys we do not keep).
    The language model's own keys map by prefix; they fit only when `language_model` names
    the same model the checkpoint was trained with."""
    if key.startswith("img_encoder.model.fc."):
        return None
    for pattern, repl in _LMAFFORDANCE3D_RULES:
        if re.match(pattern, key):
            key = re.sub(pattern, repl, key)
            break
    return _pointnet_key(key) or key


def pointrefer_key(key: str) -> str | None:
    """The affcli PointRefer key for an official one: the fusion block is `gpb` there, and
    the reference's never-called `out_head` has no counterpart (dropped). The text encoder's
    keys map by prefix; they fit only when `text_encoder` names the same model
    (roberta-base for the released checkpoints)."""
    if key.startswith("out_head."):
        return None
    if key.startswith("gpb."):
        key = "fusion." + key.removeprefix("gpb.")
    return _pointnet_key(key) or key


KEY_MAPS = {"iagnet": iagnet_key, "lmaffordance3d": lmaffordance3d_key,
            "pointrefer": pointrefer_key}


def load_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file (see `load_state_dict_file`)."""
    return load_state_dict_file(path, "checkpoint")


def from_reference_state_dict(name: str, state: dict[str, torch.Tensor], **overrides: Any
                              ) -> torch.nn.Module:
    """Our model `name` holding an official state dict's weights; every reference key must
    map onto one of ours with the same shape, else AffError names the offenders (see
    `import_reference_state_dict`, which also returns notes)."""
    return import_reference_state_dict(name, state, **overrides)[0]


# our parameters an official checkpoint may lack as a whole: LAVIS saves only parameters
# that require gradients, so an LMAffordance3D checkpoint holds no frozen LLM weights
_MAY_LACK = {"lmaffordance3d": "language_model."}


def import_reference_state_dict(name: str, state: dict[str, torch.Tensor], **overrides: Any
                                ) -> tuple[torch.nn.Module, list[str]]:
    """(our model `name` with the official weights, notes for the user). A checkpoint with
    none of the language model's keys keeps the weights `language_model` names (a note says
    so); one with some of them must hold them all."""
    from affcli import models

    name = name.lower()
    if name not in KEY_MAPS:
        raise AffError("MODEL", f"no official-checkpoint mapping for {name!r} yet "
                       f"(available: {', '.join(sorted(KEY_MAPS))})")
    converted, _ = convert_state_dict(state, KEY_MAPS[name])
    model = models.build(name, **overrides)
    own = model.state_dict()
    notes: list[str] = []
    prefix = _MAY_LACK.get(name)
    kept: set[str] = set()
    if prefix and not any(k.startswith(prefix) for k in converted):
        kept = {k for k in own if k.startswith(prefix)}
        source = getattr(model.config, "language_model", "?")
        notes.append(f"the checkpoint holds no language-model weights (the reference saves "
                     f"only trained parameters); the frozen language model ({len(kept)} "
                     f"tensors) comes from {source}, which must be the model it was trained "
                     "with")
    unmapped = sorted(k for k in converted if k not in own)
    wrong = sorted(k for k in converted if k in own and converted[k].shape != own[k].shape)
    missing = sorted(k for k in own if k not in converted and k not in kept)
    if unmapped or wrong or missing:
        parts = []
        for label, keys in (("keys with no counterpart", unmapped), ("shape mismatches", wrong),
                            ("our keys the checkpoint lacks", missing)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:6])}"
                             + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else ""))
        hint = _hidden_size_hint(name, converted, model)
        raise AffError("checkpoint", "does not match " + name + "; " + "; ".join(parts) + hint)
    model.load_state_dict({**{k: own[k] for k in kept}, **converted}, strict=True)
    return model, notes


def _hidden_size_hint(name: str, converted: dict[str, torch.Tensor], model: torch.nn.Module
                      ) -> str:
    """For LMAffordance3D: the adapters' size names the language model they were trained
    with."""
    w = converted.get("adapter_up.2.weight")
    if name != "lmaffordance3d" or w is None:
        return ""
    ours = model.language_model.config.hidden_size
    if w.shape[0] == ours:
        return ""
    return (f" (its adapters are sized for a language model of hidden size {w.shape[0]}; "
            f"language_model={model.config.language_model} has {ours}: pass "
            "--set language_model=DIR with the model it was trained with, e.g. 4096 for "
            "LLaVA-v1.6-Vicuna-7B)")
