"""What every affcli model shares: its config, the pretrained round trip, its output type,
and the contract through which the engine and the CLI use it without knowing its name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from affcli.losses import heatmap_loss
from affcli.models.config import ModelConfig, save_pretrained
from affcli.models.inputs import ModelInput, check_values, conditioning_item


@dataclass
class AffordanceOutput:
    """A model's output. `heatmap` [B, N] in [0, 1] is the per-point affordance score;
    `extras` holds model-specific tensors (e.g. IAGNet's affordance logits)."""

    heatmap: torch.Tensor
    affordance_logits: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class AffordanceModel(nn.Module):
    """Base class: holds `config`; `save_pretrained(dir)` writes config.json + safetensors.

    Everything the engine and the CLI need to know about a model is declared on its class,
    so neither ever branches on a model's name and a new model is one module:

    - `inputs`: its conditioning inputs (`ModelInput`: name, kind, help, example); `affcli
      predict` offers one option per input, and `check_inputs` / `conditioning_item` turn
      raw values into what `forward_batch` reads;
    - `dataset_kinds`: the prepared-file kinds (`laso`, `piad`, `agpil`) it learns from;
    - `train_recipe`: its paper's optimisation settings (fields of engine.recipes.TrainConfig);
    - `forward_batch(batch, points)`: the forward on a collated batch (dataset or predict);
    - `encode_points(points)` / `forward_encoded(batch, encoded)`: the same forward in two
      halves, so predict encodes a shape once for several questions (default: no sharing);
    - `loss(output, target, batch)`: its training objective for one cloud per sample;
    - `min_batch_size`: the smallest training batch it can take (BatchNorm over the batch);
    - `fixed_point_count`: True when it only takes clouds of exactly `config.n_points`;
    - export: `graph_inputs`, `graph_outputs`, `graph_forward(*tensors)` (tensors only) and
      `graph_dynamic_axes()`; text inputs are tokenised by `tokenize_texts(config, texts)`;
    - `official_key_rules` / `official_dropped_prefixes` / `official_optional_prefixes` and
      `official_mismatch_hint`: how the official implementation's checkpoint keys map onto
      ours (`affcli import-checkpoint`; None: no mapping);
    - `train_hint`: the command printed when no trained run exists.
    """

    config_class: type[ModelConfig] = ModelConfig
    inputs: ClassVar[tuple[ModelInput, ...]] = ()
    dataset_kinds: ClassVar[tuple[str, ...]] = ()
    train_recipe: ClassVar[dict[str, Any]] = {}
    min_batch_size: ClassVar[int] = 1
    fixed_point_count: ClassVar[bool] = False
    graph_inputs: ClassVar[tuple[str, ...]] = ("points",)
    graph_outputs: ClassVar[tuple[str, ...]] = ("heatmap",)
    official_key_rules: ClassVar[tuple[tuple[str, str], ...] | None] = None
    official_dropped_prefixes: ClassVar[tuple[str, ...]] = ()
    # our key prefix -> the config field naming where those weights come from, for parameters
    # an official checkpoint may lack as a whole (e.g. a frozen language model it never saved)
    official_optional_prefixes: ClassVar[dict[str, str]] = {}
    train_hint: ClassVar[str | None] = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        self.config = config

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(self, self.config, directory)

    # ------------------------------------------------------------------ training interface

    def forward_batch(self, batch: dict[str, Any], points: torch.Tensor) -> AffordanceOutput:
        """The forward on a collated batch of this model's dataset, with `points` [B, N, 3]
        (one cloud per sample: training items may carry several, see `training_loss`)."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward_batch")

    def encode_points(self, points: torch.Tensor) -> Any:
        """What of the forward depends on the clouds [B, N, 3] alone, computed once when the
        same clouds are scored under several conditionings (`forward_encoded`). Default:
        the clouds themselves (nothing shared)."""
        return points

    def forward_encoded(self, batch: dict[str, Any], encoded: Any) -> AffordanceOutput:
        """`forward_batch` from `encode_points`'s result: equal to
        `forward_batch(batch, points)` for the clouds it was computed from."""
        return self.forward_batch(batch, encoded)

    def loss(self, output: AffordanceOutput, target: torch.Tensor, batch: dict[str, Any]
             ) -> torch.Tensor:
        """The training objective for one cloud per sample; default: focal + dice."""
        return heatmap_loss(output.heatmap, target)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a training batch. PIAD/AGPIL training items pair each image with P
        clouds ([B, P, N, 3]); as in the reference scripts the losses of the P forwards are
        summed before one backward pass."""
        points, mask = batch["points"], batch["mask"]
        if points.dim() == 3:
            return self.loss(self.forward_batch(batch, points), mask, batch)
        total = points.new_zeros(())
        for j in range(points.shape[1]):
            total = total + self.loss(self.forward_batch(batch, points[:, j]), mask[:, j], batch)
        return total

    def optimizer_groups(self, lr: float, weight_decay: float, text_lr: float | None = None
                         ) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser; default: every trainable parameter at `lr`."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    # ------------------------------------------------------------------ the model contract

    @classmethod
    def model_type(cls) -> str:
        return cls.config_class.model_type

    @classmethod
    def training_hint(cls) -> str:
        """The command that trains one (printed when predict finds no run)."""
        if cls.train_hint:
            return cls.train_hint
        data = f" --data data/{cls.dataset_kinds[0]}_seen.h5" if cls.dataset_kinds else ""
        return f"affcli train {cls.model_type()}{data}"

    @classmethod
    def check_inputs(cls, values: dict[str, Any]) -> None:
        """AffError naming the option at fault when `values` (input name -> raw value) lack a
        required input or hold one this model does not take."""
        check_values(cls.inputs, values, cls.model_type())

    def conditioning_item(self, values: dict[str, Any]) -> dict[str, Any]:
        """One sample's conditioning from raw values, keyed as the model's dataset items
        (and so `forward_batch`) read it: texts as strings, an image file as `image` [3, S, S]
        with its boxes [4]."""
        return conditioning_item(self.inputs, values)

    @classmethod
    def text_input(cls) -> ModelInput | None:
        return next((i for i in cls.inputs if i.kind == "text"), None)

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None
                 ) -> dict[str, torch.Tensor]:
        """The graph's text inputs (`input_ids`, `attention_mask`) of B texts."""
        out = self.tokenize_texts(self.config, texts)
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    @classmethod
    def tokenize_texts(cls, config: ModelConfig, texts: Sequence[str]
                       ) -> dict[str, torch.Tensor]:
        """Text inputs tokenised with the tokenizer alone (no weights loaded), exactly as the
        model's forward does: what an exported graph takes next to an .onnx file."""
        raise NotImplementedError(f"{cls.__name__} takes no text input")

    def graph_forward(self, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The forward on `graph_inputs` tensors, in that order, returning `graph_outputs`:
        tensors only, so it traces and exports. Default: points alone."""
        return self.forward_batch({}, tensors[0]).heatmap

    def graph_dynamic_axes(self) -> dict[str, dict[int, tuple[str, int, int]]]:
        """Axes besides the batch that stay dynamic in an export: input -> {axis: (name,
        min, max)}. Default: the cloud size, from the first set abstraction's centre count
        (a cloud needs at least that many points) unless `fixed_point_count`."""
        if self.fixed_point_count:
            return {}
        encoder = getattr(self, "point_encoder", None)
        least = int(encoder.sa1.num_centers) if encoder is not None else 1
        return {"points": {1: ("num_points", least, 1 << 20)}}

    def official_mismatch_hint(self, converted: dict[str, torch.Tensor]) -> str:
        """What to try when an official checkpoint does not fit (e.g. a config field to set
        for the model it was trained with); "" when there is nothing to say."""
        return ""

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AffordanceModel:
        from affcli.models import from_pretrained

        model = from_pretrained(directory)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


@dataclass
class ImagePointConfig(ModelConfig):
    """The fields of the image + point branch (IAGNet, LMAffordance3D and their kin)."""

    emb_dim: int = 512
    proj_dim: int = 512
    num_heads: int = 4
    n_coarse: int = 64  # N_p, centres of the last set abstraction
    n_points: int = 2048  # N_raw
    resnet18_weights: str | None = None  # a state-dict file; None = random init (warned)
    fps_start: int | None = 0


class PointHead(nn.Module):
    """Linear(C, C/8) -> BatchNorm1d -> ReLU -> Linear(C/8, 1) on [B, N, C] -> logits
    [B, N]. `points_norm=n` normalises over the n points (each point index across the
    batch, as LMAffordance3D's reference does) instead of over the channels (IAGNet's)."""

    def __init__(self, dim: int, points_norm: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 8)
        self.over_points = points_norm is not None
        self.norm = nn.BatchNorm1d(points_norm if points_norm is not None else dim // 8)
        self.fc2 = nn.Linear(dim // 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = self.norm(h) if self.over_points else self.norm(h.transpose(1, 2)).transpose(1, 2)
        return self.fc2(h.relu()).squeeze(-1)


class ImagePointModel(AffordanceModel):
    """The branch IAGNet and LMAffordance3D share: ResNet18 trunk, PointNet++ encoder, and the
    three feature propagations back to every point. Parameter names (img_encoder,
    point_encoder, fp3, fp2, fp1) are the ones the official-checkpoint mappings target."""

    config_class = ImagePointConfig
    # added to the squared distances of the 3-NN interpolation weights; the official
    # implementations differ (IAGNet 1e-8, LMAffordance3D 0.01), and so do their functions
    interpolation_eps: ClassVar[float] = 1e-8

    def build_image_point_branch(self, config: ImagePointConfig) -> None:
        from affcli.models.backbones import ImageEncoder
        from affcli.nn.pointnet2 import EncoderConfig, FeaturePropagation, PointNet2Encoder

        emb_dim = config.emb_dim
        self.img_encoder = ImageEncoder(config.resnet18_weights)
        self.point_encoder = PointNet2Encoder(EncoderConfig(
            num_points=config.n_points, sa3_centers=config.n_coarse,
            fps_start=config.fps_start))
        enc_c = self.point_encoder.out_channels  # (3, 320, 512, 512)
        if enc_c[3] != emb_dim:
            raise ValueError(f"emb_dim must equal the encoder's {enc_c[3]} channels")
        self.fp3 = FeaturePropagation(enc_c[2] + emb_dim, [768, 512], eps=self.interpolation_eps)
        self.fp2 = FeaturePropagation(enc_c[1] + 512, [768, 512], eps=self.interpolation_eps)
        self.fp1 = FeaturePropagation(3 + enc_c[0] + 512, [512, 512], eps=self.interpolation_eps)

    def upsample(self, levels: list[tuple[torch.Tensor, torch.Tensor]],
                 coarse: torch.Tensor) -> torch.Tensor:
        """Coarse point tokens [B, N_p, C] back to every input point [B, N, 512], with the
        encoder's skip features (the input xyz concatenated at full resolution)."""
        (xyz0, p0), (xyz1, p1), (xyz2, p2), (xyz3, _) = levels
        up = self.fp3(xyz2, xyz3, p2, coarse)
        up = self.fp2(xyz1, xyz2, p1, up)
        return self.fp1(xyz0, xyz1, torch.cat([xyz0, p0], dim=-1), up)
