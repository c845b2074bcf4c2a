"""What every affcli model shares: its config, the pretrained round trip, its output type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from affcli.losses import heatmap_loss
from affcli.models.config import ModelConfig, save_pretrained


@dataclass
class AffordanceOutput:
    """A model's output. `heatmap` [B, N] in [0, 1] is the per-point affordance score;
    `extras` holds model-specific tensors (e.g. IAGNet's affordance logits)."""

    heatmap: torch.Tensor
    affordance_logits: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class AffordanceModel(nn.Module):
    """Base class: holds `config`; `save_pretrained(dir)` writes config.json + safetensors.

    What the training engine needs from a model is declared here, so the engine stays
    generic and a new model brings its own data kinds, recipe, inputs and loss:
    - `dataset_kinds`: the prepared-file kinds (`laso`, `piad`, `agpil`) it can learn from;
    - `train_recipe`: its paper's optimisation settings (fields of engine.recipes.TrainConfig);
    - `forward_batch(batch, points)`: the forward on a collated dataset batch;
    - `loss(output, target, batch)`: its training objective for one cloud per sample;
    - `min_batch_size`: the smallest training batch it can take (BatchNorm over the batch).
    """

    config_class: type[ModelConfig] = ModelConfig
    dataset_kinds: ClassVar[tuple[str, ...]] = ()
    train_recipe: ClassVar[dict[str, Any]] = {}
    min_batch_size: ClassVar[int] = 1

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

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AffordanceModel:
        from affcli.models import from_pretrained

        model = from_pretrained(directory)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class ImagePointModel(AffordanceModel):
    """The branch IAGNet and LMAffordance3D share: ResNet18 trunk, PointNet++ encoder, and the
    three feature propagations back to every point. Parameter names (img_encoder,
    point_encoder, fp3, fp2, fp1) are the ones the official-checkpoint mappings target."""

    def build_image_point_branch(self, emb_dim: int, n_points: int, n_coarse: int,
                                 fps_start: int | None, resnet18_weights: str | None,
                                 fp_eps: float = 1e-8) -> None:
        from affcli.models.backbones import ImageEncoder
        from affcli.nn.pointnet2 import EncoderConfig, FeaturePropagation, PointNet2Encoder

        self.img_encoder = ImageEncoder(resnet18_weights)
        self.point_encoder = PointNet2Encoder(EncoderConfig(
            num_points=n_points, sa3_centers=n_coarse, fps_start=fps_start))
        enc_c = self.point_encoder.out_channels  # (3, 320, 512, 512)
        if enc_c[3] != emb_dim:
            raise ValueError(f"emb_dim must equal the encoder's {enc_c[3]} channels")
        self.fp3 = FeaturePropagation(enc_c[2] + emb_dim, [768, 512], eps=fp_eps)
        self.fp2 = FeaturePropagation(enc_c[1] + 512, [768, 512], eps=fp_eps)
        self.fp1 = FeaturePropagation(3 + enc_c[0] + 512, [512, 512], eps=fp_eps)

    def upsample(self, levels: list[tuple[torch.Tensor, torch.Tensor]],
                 coarse: torch.Tensor) -> torch.Tensor:
        """Coarse point tokens [B, N_p, C] back to every input point [B, N, 512], with the
        encoder's skip features (the input xyz concatenated at full resolution)."""
        (xyz0, p0), (xyz1, p1), (xyz2, p2), (xyz3, _) = levels
        up = self.fp3(xyz2, xyz3, p2, coarse)
        up = self.fp2(xyz1, xyz2, p1, up)
        return self.fp1(xyz0, xyz1, torch.cat([xyz0, p0], dim=-1), up)
