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

import torch
from torch import nn

from affcli.models import register
from affcli.models.backbones import DEFAULT_TEXT_MODEL, load_text_model
from affcli.models.base import AffordanceOutput, ImagePointModel
from affcli.models.config import ModelConfig
from affcli.nn.alignment import AffordanceRevealed, JointRegionAlignment


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

    def __init__(self, config: LMAffordance3DConfig) -> None:
        super().__init__(config)
        c = config.emb_dim
        self.build_image_point_branch(c, config.n_points, config.n_coarse, config.fps_start,
                                      config.resnet18_weights)
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
        """Each sequence as [valid text tokens, multimodal tokens, text padding]."""
        seqs, masks = [], []
        ones = torch.ones(tokens.shape[1], dtype=text_mask.dtype, device=text_mask.device)
        for i in range(tokens.shape[0]):
            n = int(text_mask[i].sum())
            seqs.append(torch.cat([text_embeds[i, :n], tokens[i], text_embeds[i, n:]]))
            masks.append(torch.cat([text_mask[i, :n], ones, text_mask[i, n:]]))
        return torch.stack(seqs), torch.stack(masks)

    def forward(self, points: torch.Tensor, image: torch.Tensor, instructions: Sequence[str]
                ) -> AffordanceOutput:
        """points [B, N, 3], image [B, 3, S, S], instructions: B strings -> heatmap [B, N]."""
        b = points.shape[0]
        if isinstance(instructions, str) or len(instructions) != b:
            raise ValueError(f"need one instruction per cloud ({b}), got "
                             f"{1 if isinstance(instructions, str) else len(instructions)}")
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

        # right padding, truncation from the left (the end of an instruction matters most)
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        text = self.tokenizer(list(instructions), return_tensors="pt", padding="longest",
                              truncation=True, max_length=self.config.text_tokens
                              ).to(points.device)
        embeds = self.language_model.get_input_embeddings()(text["input_ids"])
        seq, mask = self._insert_tokens(embeds, text["attention_mask"], self.adapter_up(spatial))
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
