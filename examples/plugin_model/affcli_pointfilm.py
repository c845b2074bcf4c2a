"""PointFiLM: question-conditioned affordance heatmaps with feature-wise linear modulation.

A baseline the affordance-grounding papers compare against in spirit (a point backbone and a
sentence embedding, fused late): PointNet++ (MSG) encodes the cloud and propagates features
back to every point; the question is embedded by the text model (mean of its token states,
as sentence-transformers do for MiniLM); FiLM (Perez et al., AAAI 2018) scales and shifts the
per-point features by vectors predicted from that embedding; a small MLP scores each point.

Everything affcli needs is declared on the class (see `affcli.models.base.AffordanceModel`):
this file and one entry point in pyproject.toml are the whole plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from affcli.models import register
from affcli.models.backbones import DEFAULT_TEXT_MODEL, load_text_model, load_tokenizer
from affcli.models.base import AffordanceModel, AffordanceOutput
from affcli.models.config import ModelConfig
from affcli.models.inputs import ModelInput
from affcli.nn.pointnet2 import EncoderConfig, FeaturePropagation, PointNet2Encoder
from affcli.nn.precision import full_precision


@dataclass
class PointFiLMConfig(ModelConfig):
    model_type = "pointfilm"

    n_points: int = 2048
    width: int = 128  # per-point feature width after propagation
    text_tokens: int = 32  # questions padded / truncated to this many tokens
    text_encoder: str = DEFAULT_TEXT_MODEL
    freeze_text_encoder: bool = True
    fps_start: int | None = 0


def tokenize(tokenizer: Any, texts: Sequence[str], length: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(list(texts), padding="max_length", truncation=True, max_length=length,
                      return_tensors="pt")
    return {k: batch[k].long() for k in ("input_ids", "attention_mask")}


@register("pointfilm", PointFiLMConfig)
class PointFiLM(AffordanceModel):
    """forward(points [B, N, 3], questions: B strings) -> heatmap [B, N] in [0, 1]."""

    config_class = PointFiLMConfig
    inputs = (ModelInput(
        "question", "text", "the question about the object's affordance",
        example="Where would you grasp this mug?",
        samples=("Where would you grasp this mug?", "Which part of the chair can you sit on?",
                 "Where can this bottle be opened?")),)
    dataset_kinds = ("laso",)
    train_recipe = {"epochs": 30, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-4,
                    "optimizer": "adam", "scheduler": "step", "step_size": 10, "gamma": 0.5}
    graph_inputs = ("points", "input_ids", "attention_mask")

    def __init__(self, config: PointFiLMConfig) -> None:
        super().__init__(config)
        w = config.width
        self.text_encoder, self.tokenizer = load_text_model(config.text_encoder)
        if config.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.point_encoder = PointNet2Encoder(EncoderConfig(num_points=config.n_points,
                                                            fps_start=config.fps_start))
        c0, c1, c2, c3 = self.point_encoder.out_channels
        self.fp3 = FeaturePropagation(c2 + c3, [256, 256])
        self.fp2 = FeaturePropagation(c1 + 256, [256, w])
        self.fp1 = FeaturePropagation(3 + c0 + w, [w, w])
        self.film = nn.Linear(self.text_encoder.config.hidden_size, 2 * w)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        nn.init.zeros_(self.film.bias)
        self.head = nn.Sequential(nn.Linear(w, w // 2), nn.ReLU(), nn.Linear(w // 2, 1))

    # ------------------------------------------------------------------ the contract

    def forward_batch(self, batch: dict[str, Any], points: torch.Tensor) -> AffordanceOutput:
        return self(points, batch["question"])

    @classmethod
    def tokenize_texts(cls, config: PointFiLMConfig, texts: Sequence[str]
                       ) -> dict[str, torch.Tensor]:
        return tokenize(load_tokenizer(config.text_encoder), texts, config.text_tokens)

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None
                 ) -> dict[str, torch.Tensor]:
        out = tokenize(self.tokenizer, texts, self.config.text_tokens)
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    def graph_forward(self, points: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(points, input_ids, attention_mask).heatmap

    # ------------------------------------------------------------------ forward

    def forward(self, points: torch.Tensor, questions: Sequence[str]) -> AffordanceOutput:
        if isinstance(questions, str) or len(questions) != points.shape[0]:
            raise ValueError("need one question per cloud")
        text = self.tokenize(questions, points.device)
        return self.forward_tokens(points, text["input_ids"], text["attention_mask"])

    def forward_tokens(self, points: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> AffordanceOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled()
                                    and not self.config.freeze_text_encoder):
            states = self.text_encoder(input_ids=input_ids,
                                       attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        sentence = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, H]

        (xyz0, f0), (xyz1, f1), (xyz2, f2), (xyz3, f3) = self.point_encoder(points)
        up = self.fp3(xyz2, xyz3, f2, f3)
        up = self.fp2(xyz1, xyz2, f1, up)
        up = self.fp1(xyz0, xyz1, torch.cat([xyz0, f0], dim=-1), up)  # [B, N, width]

        gamma, beta = self.film(sentence).unsqueeze(1).chunk(2, dim=-1)
        # the scores in float32 even under `eval --amp` (bfloat16 logits would tie points)
        logits = full_precision(self.head, up * (1 + gamma) + beta).squeeze(-1)
        return AffordanceOutput(heatmap=torch.sigmoid(logits), extras={"logits": logits})
