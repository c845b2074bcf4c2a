"""LMAffordance3D (AGPIL, CVPR 2025): image + point cloud + instruction, fused by a language
model.

Data flow (C = emb_dim 512, N_p = 64 coarse points, N_i = 49 image regions, H = the language
model's hidden size):
  image -> ResNet18 to layer4 [B,C,7,7]; points -> PointNet++ encoder levels
  joint region alignment of the 49 regions and the 64 coarse point features -> spatial
      tokens [B, N_p+N_i, C]
  adapter up (Linear-ReLU-Linear, C -> H); the instruction's token embeddings with the spatial
      tokens inserted right after the valid text tokens; the language model (frozen by
      default) over that sequence -> hidden states [B, L + N_p+N_i, H]; adapter down (H -> C)
  the first N_p+N_i positions are the "semantic" features, the rest the "instructional" ones
      (the reference splits the sequence this way, whatever each position held)
  affordance decoder: the spatial tokens attend over instructional and semantic features
  head: feature propagation back to N points from the aligned point tokens, gated by the
      pooled point-affordance tokens, Linear -> BatchNorm over the *points* axis (as the
      reference) -> ReLU -> Linear -> sigmoid.

The paper's language model is a frozen LLaVA-v1.6-Vicuna-7B in bf16; `language_model=` takes
any `transformers` model directory that accepts `inputs_embeds` (its base model's last hidden
state is used). The default is the packaged MiniLM so that it runs offline on a laptop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from affcli.models import register
from affcli.models.backbones import DEFAULT_TEXT_MODEL, load_text_model
from affcli.models.base import AffordanceOutput, ImagePointModel
from affcli.models.config import ModelConfig
from affcli.nn.alignment import AffordanceRevealed, JointRegionAlignment


def tokenize_instructions(tokenizer: Any, instructions: Sequence[str], text_tokens: int
                          ) -> dict[str, torch.Tensor]:
    """LMAffordance3D's tokenisation (`LMAffordance3D.tokenize`), usable with the tokenizer
    alone (e.g. to feed an exported graph): int64 input_ids / attention_mask [B, L]."""
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    text = tokenizer(list(instructions), return_tensors="pt", padding="longest",
                     truncation=True, max_length=text_tokens)
    return {k: text[k].long() for k in ("input_ids", "attention_mask")}


@dataclasses.dataclass
class LMAffordance3DConfig(ModelConfig):
    model_type = "lmaffordance3d"
    emb_dim: int = 512
    proj_dim: int = 512
    num_heads: int = 4
    n_coarse: int = 64  # N_p
    n_points: int = 2048  # N_raw (the head normalises over the points axis, so it is fixed)
    text_tokens: int = 32  # max_txt_len
    language_model: str = DEFAULT_TEXT_MODEL
    freeze_language_model: bool = True
    resnet18_weights: str | None = None
    fps_start: int | None = 0


class PointsBatchNormHead(nn.Module):
    """Linear(C, C/8) -> BatchNorm1d over the N points (the reference normalises each point
    index across the batch) -> ReLU -> Linear(C/8, 1) -> sigmoid, on [B, N, C]."""

    def __init__(self, dim: int, n_points: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 8)
        self.norm = nn.BatchNorm1d(n_points)
        self.fc2 = nn.Linear(dim // 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.norm(self.fc1(x)).relu())).squeeze(-1)


@register("lmaffordance3d", LMAffordance3DConfig)
class LMAffordance3D(ImagePointModel):
    config_class = LMAffordance3DConfig
    dataset_kinds = ("agpil",)
    # the LAVIS project files: AdamW, linear warmup from 1e-6 over 2000 steps of the first
    # epoch, then cosine per epoch from 1e-4 to 1e-5, batch 6, 3 clouds per image
    train_recipe = {"epochs": 20, "batch_size": 6, "lr": 1e-4, "weight_decay": 0.06,
                    "optimizer": "adamw", "scheduler": "warmup_cosine", "min_lr": 1e-5,
                    "warmup_lr": 1e-6, "warmup_steps": 2000, "pairing_num": 3}

    def forward_batch(self, batch: dict[str, Any], points: torch.Tensor) -> AffordanceOutput:
        return self(points, batch["image"], batch["instruction"])

    def optimizer_groups(self, lr: float, weight_decay: float, text_lr: float | None = None
                         ) -> list[dict[str, Any]]:
        # as LAVIS: no decay on biases and other 1-D parameters (norm scales and shifts)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
        return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0}]

    def __init__(self, config: LMAffordance3DConfig) -> None:
        super().__init__(config)
        c = config.emb_dim
        # the reference's PointNet2_utils adds 0.01 (not 1e-8) to the squared distances of
        # the feature propagations (tests/models/test_golden_outputs.py checks against it)
        self.build_image_point_branch(c, config.n_points, config.n_coarse, config.fps_start,
                                      config.resnet18_weights, fp_eps=0.01)
        self.language_model, self.tokenizer = load_text_model(config.language_model)
        if config.freeze_language_model:
            self.language_model.requires_grad_(False)
        hidden = self.language_model.config.hidden_size
        self.fusion = JointRegionAlignment(c, config.num_heads)
        self.adapter_up = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, hidden))
        self.adapter_down = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, c))
        self.affordance_decoder = AffordanceRevealed(c, config.proj_dim)
        self.out_head = PointsBatchNormHead(c, config.n_points)

    def language_model_parameters(self) -> Iterator[nn.Parameter]:
        return self.language_model.parameters()

    def other_parameters(self) -> Iterator[nn.Parameter]:
        own = {id(p) for p in self.language_model.parameters()}
        return (p for p in self.parameters() if id(p) not in own)

    def _insert_tokens(self, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                       tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence as [valid text tokens, multimodal tokens, text padding].

        One gather over [text, tokens] for the whole batch (no per-sample Python loop and no
        count read back into Python), so traced graphs keep batch and text length dynamic."""
        length, t = text_embeds.shape[1], tokens.shape[1]
        n = text_mask.sum(1, keepdim=True)  # [B, 1] valid text tokens (right padding)
        pos = torch.arange(length + t, device=text_mask.device).unsqueeze(0)  # [1, L + T]
        # output position -> row of cat([text, tokens]): text before, tokens, then padding
        src = torch.where(pos < n, pos, torch.where(pos < n + t, length + pos - n, pos - t))
        both = torch.cat([text_embeds, tokens.to(text_embeds.dtype)], dim=1)
        seq = torch.gather(both, 1, src.unsqueeze(-1).expand(-1, -1, both.shape[2]))
        ones = torch.ones_like(text_mask[:, :1]).expand(-1, t)
        mask = torch.gather(torch.cat([text_mask, ones], dim=1), 1, src.expand_as(seq[..., 0]))
        return seq, mask

    def tokenize(self, instructions: Sequence[str], device: torch.device | None = None
                 ) -> dict[str, torch.Tensor]:
        """{'input_ids', 'attention_mask'}: int64 [B, L], L the longest instruction's token
        count up to `text_tokens`; right padding, truncation from the left (the end of an
        instruction matters most). `forward_tokens` starts from these, so an exported graph
        takes them as inputs and the tokenizer runs outside it."""
        out = tokenize_instructions(self.tokenizer, instructions, self.config.text_tokens)
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    def forward(self, points: torch.Tensor, image: torch.Tensor, instructions: Sequence[str]
                ) -> AffordanceOutput:
        """points [B, N, 3], image [B, 3, S, S], instructions: B strings -> heatmap [B, N]."""
        b = points.shape[0]
        if isinstance(instructions, str) or len(instructions) != b:
            raise ValueError(f"need one instruction per cloud ({b}), got "
                             f"{1 if isinstance(instructions, str) else len(instructions)}")
        text = self.tokenize(instructions, points.device)
        return self.forward_tokens(points, image, text["input_ids"], text["attention_mask"])

    def forward_tokens(self, points: torch.Tensor, image: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> AffordanceOutput:
        """The forward from tokenised instructions (`tokenize`): tensors only, so it traces
        and exports; `forward` is this after the tokenizer."""
        b = points.shape[0]
        if image.dim() != 4 or image.shape[0] != b:
            raise ValueError(f"image must be [B={b}, 3, H, W], got {list(image.shape)}")
        if points.shape[1] != self.config.n_points:
            raise ValueError(f"this model normalises over exactly {self.config.n_points} points "
                             f"(its head's BatchNorm), got {points.shape[1]}")
        c = self.config.emb_dim
        feat = self.img_encoder(image)
        levels = self.point_encoder(points)
        p3 = levels[-1][1]
        spatial = self.fusion(feat.reshape(b, c, -1), p3.transpose(1, 2))  # [B, T, C]

        embeds = self.language_model.get_input_embeddings()(input_ids)
        seq, mask = self._insert_tokens(embeds, attention_mask, self.adapter_up(spatial))
        # a frozen language model still passes gradients to its inputs (the adapter, the
        # fusion and both encoders train through it), so no no_grad here
        hidden = self.language_model(inputs_embeds=seq, attention_mask=mask).last_hidden_state
        hidden = self.adapter_down(hidden)
        t = spatial.shape[1]
        semantic, instructional = hidden[:, :t], hidden[:, t:]
        # The reference reads both through `.view(B, C, -1)` and a transpose: a reshape of
        # the [B, L, C] memory, not a transpose; kept so the function is the same.
        key = instructional.reshape(b, c, -1).transpose(1, 2)
        value = semantic.reshape(b, c, -1).transpose(1, 2)
        aff = self.affordance_decoder(spatial, key, value)

        n_p = self.config.n_coarse
        up = self.upsample(levels, spatial[:, :n_p])
        heatmap = self.out_head(up * aff[:, :n_p].mean(1, keepdim=True))
        return AffordanceOutput(heatmap=heatmap)
