"""The models and their registry.

`build(name, **overrides)` makes a model from its paper-default config; `from_pretrained(dir)`
loads a `save_pretrained` directory. Adding a model = one module that defines a config
dataclass and a model class, and one `register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from affcli.errors import AffError
from affcli.models.config import ModelConfig, load_state, load_weights, read_config

_REGISTRY: dict[str, tuple[type[ModelConfig], Callable[[Any], torch.nn.Module]]] = {}
# name -> module that registers it, imported on first use (importing a model may be slow)
_LAZY = {"pointrefer": "affcli.models.zoo.pointrefer", "iagnet": "affcli.models.zoo.iagnet",
         "lmaffordance3d": "affcli.models.zoo.lmaffordance3d"}


def register(name: str, config_cls: type[ModelConfig]) -> Callable[[type], type]:
    """Class decorator: `@register("mymodel", MyConfig)` on a model taking `config`."""

    def wrap(model_cls: type) -> type:
        _REGISTRY[name] = (config_cls, model_cls)
        return model_cls

    return wrap


def _entry(name: str) -> tuple[type[ModelConfig], Callable[[Any], torch.nn.Module]]:
    if name not in _REGISTRY and name in _LAZY:
        try:
            __import__(_LAZY[name])
        except ModuleNotFoundError as exc:
            if exc.name != _LAZY[name]:
                raise
    if name not in _REGISTRY:
        available = sorted(set(_REGISTRY) | {n for n in _LAZY if _module_exists(_LAZY[n])})
        raise AffError("MODEL", f"unknown model {name!r} (available: {', '.join(available)})")
    return _REGISTRY[name]


def _module_exists(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def model_class(name: str) -> Callable[[Any], torch.nn.Module]:
    """The registered model class of `name` (its dataset kinds and recipe are on it)."""
    return _entry(name.lower())[1]


def available() -> list[str]:
    return sorted(set(_REGISTRY) | {n for n, m in _LAZY.items() if _module_exists(m)})


def build(name: str, **overrides: Any) -> torch.nn.Module:
    """A model with the paper's defaults, any config field overridden by keyword."""
    config_cls, model_cls = _entry(name.lower())
    return model_cls(config_cls.from_dict(overrides, source="overrides"))


def from_pretrained(directory: str | Path, **overrides: Any) -> torch.nn.Module:
    """Load a directory written by `model.save_pretrained(dir)`."""
    model_type, fields = read_config(directory)
    config_cls, model_cls = _entry(model_type)
    config = config_cls.from_dict({**fields, **overrides}, source=Path(directory) / "config.json")
    model = model_cls(config)
    load_state(model, load_weights(directory), Path(directory) / "model.safetensors")
    return model


def from_reference_state_dict(name: str, state_dict: dict[str, torch.Tensor], **overrides: Any
                              ) -> torch.nn.Module:
    """Our model `name` holding an official checkpoint's weights (see models.reference)."""
    from affcli.models.official import from_reference_state_dict as convert

    return convert(name, state_dict, **overrides)
