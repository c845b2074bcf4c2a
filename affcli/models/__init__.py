"""The models and their registry.

A model registers itself: `@register("name", NameConfig)` on its class. The registry finds
models in two places, importing them only when asked for (importing a model may be slow):

- the built-in models, one module each in `affcli/models/zoo/`;
- models of other installed packages, through the entry-point group `affcli.models`
  (in the package's pyproject.toml: `[project.entry-points."affcli.models"]`,
  `mymodel = "mypackage.model"`): loading the entry point imports the module, whose
  `@register` does the rest.

`build(name, **overrides)` makes a model from its paper-default config; `from_pretrained(dir)`
loads a `save_pretrained` directory. Everything the engine and the CLI need to know about a
model is declared on its class (see `affcli.models.base.AffordanceModel`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from affcli.errors import AffError
from affcli.models.config import (
    ModelConfig,
    load_state,
    load_weights,
    read_config,
    weights_to_be_loaded,
)

ENTRY_POINT_GROUP = "affcli.models"
ZOO = "affcli.models.zoo"


@dataclass
class Registration:
    config_class: type[ModelConfig]
    model_class: Callable[[Any], torch.nn.Module]
    origin: str  # "built-in", or the distribution that provides it ("name version")


_REGISTRY: dict[str, Registration] = {}
# the distribution of the entry point being loaded, so `register` can record the origin
_loading_origin: list[str] = []
_scanned = False


def register(name: str, config_cls: type[ModelConfig]) -> Callable[[type], type]:
    """Class decorator: `@register("mymodel", MyConfig)` on a model taking `config`."""

    def wrap(model_cls: type) -> type:
        if config_cls.model_type != name:
            raise ValueError(f"{config_cls.__name__}.model_type is "
                             f"{config_cls.model_type!r}; it must be the registered name "
                             f"{name!r} (config.json records it)")
        module = getattr(model_cls, "__module__", "")
        origin = ("built-in" if module.startswith(ZOO + ".") else
                  _loading_origin[-1] if _loading_origin else f"module {module}")
        _REGISTRY[name] = Registration(config_cls, model_cls, origin)
        return model_cls

    return wrap


def unregister(name: str) -> None:
    """Forget a model registered in this process (e.g. one a test defined)."""
    _REGISTRY.pop(name, None)


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    dist = getattr(ep, "dist", None)
    origin = f"{dist.name} {dist.version}" if dist is not None else ep.value
    _loading_origin.append(origin)
    try:
        ep.load()
    except Exception as exc:  # a broken plugin must not take the built-in models down
        warnings.warn(f"model plugin {ep.name!r} ({ep.value}, from {origin}) failed to load: "
                      f"{type(exc).__name__}: {exc}", stacklevel=3)
    finally:
        _loading_origin.pop()


def _import_zoo(name: str) -> None:
    module = f"{ZOO}.{name}"
    if importlib.util.find_spec(module) is not None:
        importlib.import_module(module)


def _scan() -> None:
    """Import every built-in model module and every installed plugin (once)."""
    global _scanned
    if _scanned:
        return
    _scanned = True
    from affcli.models import zoo

    for info in pkgutil.iter_modules(zoo.__path__):
        importlib.import_module(f"{ZOO}.{info.name}")
    for ep in _entry_points():
        _load_entry_point(ep)


def _entry(name: str) -> Registration:
    name = name.lower()
    if name not in _REGISTRY and name.isidentifier():
        _import_zoo(name)  # the common case: one built-in model, nothing else imported
    if name not in _REGISTRY:
        for ep in _entry_points():
            if ep.name == name:
                _load_entry_point(ep)
    if name not in _REGISTRY:
        _scan()  # a module may register under another name than its own
    if name not in _REGISTRY:
        raise AffError("MODEL", f"unknown model {name!r} (available: {', '.join(available())})",
                       hint="`affcli models` lists the installed models; others install as "
                       "plugins (see docs/architecture.md, 'Adding a model')")
    return _REGISTRY[name]


def model_class(name: str) -> Any:
    """The registered model class of `name` (its declarations are on it)."""
    return _entry(name).model_class


def config_class(name: str) -> type[ModelConfig]:
    return _entry(name).config_class


def origin(name: str) -> str:
    """Where `name` comes from: "built-in", or the plugin's distribution and version."""
    return _entry(name).origin


def available() -> list[str]:
    """Every registered model: the built-ins, installed plugins, and any registered in this
    process."""
    _scan()
    return sorted(_REGISTRY)


def build(name: str, **overrides: Any) -> torch.nn.Module:
    """A model with the paper's defaults, any config field overridden by keyword."""
    reg = _entry(name)
    return reg.model_class(reg.config_class.from_dict(overrides, source="overrides"))


def from_pretrained(directory: str | Path, **overrides: Any) -> torch.nn.Module:
    """Load a directory written by `model.save_pretrained(dir)`."""
    model_type, fields = read_config(directory)
    reg = _entry(model_type)
    config = reg.config_class.from_dict({**fields, **overrides},
                                        source=Path(directory) / "config.json")
    with weights_to_be_loaded():
        model = reg.model_class(config)
    load_state(model, load_weights(directory), Path(directory) / "model.safetensors",
               assign=True)
    return model


def from_reference_state_dict(name: str, state_dict: dict[str, torch.Tensor], **overrides: Any
                              ) -> torch.nn.Module:
    """Our model `name` holding an official checkpoint's weights (see models.official)."""
    from affcli.models.official import from_reference_state_dict as convert

    return convert(name, state_dict, **overrides)
