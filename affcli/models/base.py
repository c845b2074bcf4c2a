"""What every affcli model shares: its config, the pretrained round trip, its output type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from affcli.models.config import ModelConfig, save_pretrained


@dataclass
class AffordanceOutput:
    """A model's output. `heatmap` [B, N] in [0, 1] is the per-point affordance score;
    `extras` holds model-specific tensors (e.g. IAGNet's affordance logits)."""

    heatmap: torch.Tensor
    affordance_logits: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class AffordanceModel(nn.Module):
    """Base class: holds `config`; `save_pretrained(dir)` writes config.json + safetensors."""

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        self.config = config

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AffordanceModel:
        from affcli.models import from_pretrained

        model = from_pretrained(directory)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
