"""IAGNet (PIAD, ICCV 2023): grounding 3D affordance from an interaction image.

Data flow (shapes for B clouds of N points, emb_dim C = 512, N_p = 64 coarse points):
  image [B,3,224,224] -> ResNet18 to layer4 -> F_I [B,C,7,7]
  boxes (scaled to the 7x7 map) -> object / subject features by roi_align to 4x4, scene =
      F_I masked outside both boxes, roi_align'ed over its 6x6 extent to 4x4
  points [B,N,3] -> PointNet++ encoder -> levels; the coarsest [B,N_p,C] meets the object
      features in the joint region alignment (shared conv MLP to a common space, cross-
      similarity softmax both ways, self-attention per modality, then jointly) -> F_j
      [B,N_p+16,C]
  affordance-revealed module: F_j attends to subject and scene features -> [B,N_p+16,C]
  decoder: three feature propagations back to N points from the aligned point tokens, the
      pooled affordance tokens gate them -> heatmap head; pooled point+image affordance
      tokens -> 17-way affordance classifier; the image halves of F_j and of the affordance
      tokens feed the KL loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torchvision.ops import roi_align

from affcli.errors import AffError
from affcli.losses import iagnet_loss
from affcli.models import register
from affcli.models.base import AffordanceOutput, ImagePointConfig, ImagePointModel, PointHead
from affcli.models.inputs import OBJECT_BOX, ModelInput
from affcli.nn.alignment import AffordanceRevealed, JointRegionAlignment
from affcli.nn.precision import full_precision


@dataclasses.dataclass
class IAGNetConfig(ImagePointConfig):
    model_type = "iagnet"
    num_affordance: int = 17
    image_size: int = 224


def _box_masks_and_rois(feat: torch.Tensor, subject: torch.Tensor, obj: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scene mask (1 outside both boxes) and the roi_align boxes, as the reference builds
    them on the feature map: rows/cols int(v + 0.5), and the object RoI's x2 + 0.5 quirk.

    Written with tensor ops over the whole batch (no `.tolist()`, no loop over samples) so
    that traced graphs take the boxes as inputs and keep the batch size dynamic. The
    reference's int(v + 0.5) on Python floats is floor in float64 here: the two differ
    only below zero, where the slice bound is clamped to 0 anyway."""
    _, _, h, w = feat.shape

    def bounds(box: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        edges = torch.floor(box[:, [lo, hi]].double() + 0.5).clamp_min(0)  # [B, 2]
        return edges[:, :1, None], edges[:, 1:, None]  # [B, 1, 1] each

    rows = torch.arange(h, device=feat.device, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, device=feat.device, dtype=torch.float64).view(1, 1, w)
    covered = torch.zeros_like(rows * cols, dtype=torch.bool)
    for box in (obj, subject):
        (y1, y2), (x1, x2) = bounds(box, 1, 3), bounds(box, 0, 2)
        covered = covered | ((rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2))
    mask = (~covered).to(feat.dtype).unsqueeze(1)  # [B, 1, h, w]
    index = torch.arange(obj.shape[0], device=feat.device).to(feat.dtype).unsqueeze(1)
    obj = obj.to(feat.dtype)
    obj_rois = torch.cat([index, obj[:, :2], obj[:, 2:3] + 0.5, obj[:, 3:]], dim=1)
    sub_rois = torch.cat([index, subject.to(feat.dtype)], dim=1)
    return mask, obj_rois, sub_rois


@register("iagnet", IAGNetConfig)
class IAGNet(ImagePointModel):
    config_class = IAGNetConfig
    inputs = (
        ModelInput("image", "image", "the interaction image (JPEG or PNG)",
                   example="interaction.jpg"),
        ModelInput("boxes", "boxes", "the image's boxes: LabelMe JSON with rectangles "
                   "labelled subject and object", example="boxes.json", required=False),
        ModelInput("subject_box", "box", "the subject's box x1,y1,x2,y2 in image pixels",
                   example="10,20,120,200", required=False),
        ModelInput("object_box", "box", "the object's box x1,y1,x2,y2 in image pixels",
                   example="100,80,300,260", required=False),
    )
    dataset_kinds = ("piad", "agpil")
    graph_inputs = ("points", "image", "subject_box", "object_box")
    graph_outputs = ("heatmap", "affordance_logits")
    official_key_rules = (
        (r"^JRA\.", "jra."),
        (r"^ARM\.cross_atten\.", "arm."),
        (r"^ARM\.fusion\.", "arm.fusion."),
        (r"^decoder\.out_head\.0\.", "out_head.fc1."),
        (r"^decoder\.out_head\.2\.", "out_head.norm."),
        (r"^decoder\.out_head\.5\.", "out_head.fc2."),
        (r"^decoder\.cls_head\.", "cls_head."),
        (r"^decoder\.(fp\d)\.", r"\1."),
    )
    official_dropped_prefixes = ("img_encoder.model.fc.",)  # the unused ResNet classifier
    min_batch_size = 2  # the affordance head's BatchNorm1d normalises over the batch
    # IAGNet's train.py: Adam, cosine annealing to 1e-6 over the run, batch 16, 2 clouds per
    # image; the loss weights are in affcli.losses (CE 0.3, KL 0.5); best.pt by AUC
    train_recipe = {"epochs": 80, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-3,
                    "optimizer": "adam", "scheduler": "cosine", "min_lr": 1e-6,
                    "pairing_num": 2, "select_by": "auc"}

    def forward_batch(self, batch: dict[str, Any], points: torch.Tensor) -> AffordanceOutput:
        return self(points, batch["image"], batch["subject_box"], batch["object_box"])

    @classmethod
    def check_inputs(cls, values: dict[str, Any]) -> None:
        super().check_inputs(values)
        if values.get("boxes") is None and values.get(OBJECT_BOX) is None:
            raise AffError("--boxes", "an iagnet model needs the image's boxes: --boxes "
                           "BOXES.json (LabelMe) or --object-box x1,y1,x2,y2 [--subject-box ...]")

    def graph_forward(self, points: torch.Tensor, image: torch.Tensor, subject_box: torch.Tensor,
                      object_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self(points, image, subject_box, object_box)
        return out.heatmap, out.affordance_logits

    def loss(self, output: AffordanceOutput, target: torch.Tensor, batch: dict[str, Any]
             ) -> torch.Tensor:
        return iagnet_loss(output.heatmap, target, output.affordance_logits, batch["affordance"],
                           (output.extras["image_affordance"], output.extras["image_aligned"]))

    def __init__(self, config: IAGNetConfig) -> None:
        super().__init__(config)
        c = config.emb_dim
        self.build_image_point_branch(config)
        self.jra = JointRegionAlignment(c, config.num_heads)
        self.arm = AffordanceRevealed(c, config.proj_dim)
        self.out_head = PointHead(c)
        self.cls_head = nn.Sequential(
            nn.Linear(2 * c, c // 2), nn.BatchNorm1d(c // 2), nn.ReLU(),
            nn.Linear(c // 2, config.num_affordance), nn.BatchNorm1d(config.num_affordance),
        )

    def forward(self, points: torch.Tensor, image: torch.Tensor, subject_box: torch.Tensor,
                object_box: torch.Tensor) -> AffordanceOutput:
        """points [B, N, 3]; image [B, 3, S, S]; boxes [B, 4] (x1, y1, x2, y2 in image pixels;
        never modified). Returns heatmap [B, N], affordance_logits [B, A] and, in extras,
        the two [B, C, 16] maps the KL loss compares."""
        b = points.shape[0]
        if image.dim() != 4 or image.shape[0] != b or image.shape[1] != 3:
            raise ValueError(f"image must be [B={b}, 3, H, W], got {list(image.shape)}")
        for name, box in (("subject_box", subject_box), ("object_box", object_box)):
            if tuple(box.shape) != (b, 4):
                raise ValueError(f"{name} must be [B={b}, 4], got {list(box.shape)}")
        feat = self.img_encoder(image)  # [B, C, h, w]
        scale = feat.shape[2] / image.shape[2]
        sub, obj = subject_box.float() * scale, object_box.float() * scale  # copies
        scene_mask, obj_rois, sub_rois = _box_masks_and_rois(feat, sub, obj)
        f_obj = roi_align(feat, obj_rois, output_size=(4, 4), sampling_ratio=4)
        f_sub = roi_align(feat, sub_rois, output_size=(4, 4), sampling_ratio=4)
        extent = torch.tensor([0.0, 0.0, 6.0, 6.0], dtype=feat.dtype, device=feat.device)
        full = torch.cat([obj_rois[:, :1], extent.expand(obj_rois.shape[0], 4)], dim=1)
        f_scene = roi_align(feat * scene_mask, full, output_size=(4, 4))

        levels = self.point_encoder(points)
        p3 = levels[-1][1]
        c = self.config.emb_dim
        joint = self.jra(f_obj.reshape(b, c, -1), p3.transpose(1, 2))  # [B, N_p + 16, C]
        aff = self.arm(joint, f_sub.reshape(b, c, -1).transpose(1, 2),
                       f_scene.reshape(b, c, -1).transpose(1, 2))
        n_p = self.config.n_coarse
        p_align, i_align = joint[:, :n_p], joint[:, n_p:]
        f_pa, f_ia = aff[:, :n_p], aff[:, n_p:]

        up = self.upsample(levels, p_align)  # [B, N, C]
        pa_pool, ia_pool = f_pa.mean(1), f_ia.mean(1)
        logits = self.cls_head(torch.cat([pa_pool, ia_pool], dim=-1))
        heatmap = torch.sigmoid(full_precision(self.out_head, up * pa_pool.unsqueeze(1)))
        return AffordanceOutput(
            heatmap=heatmap, affordance_logits=logits,
            extras={"image_affordance": f_ia.transpose(1, 2).contiguous(),
                    "image_aligned": i_align.transpose(1, 2).contiguous()},
        )
