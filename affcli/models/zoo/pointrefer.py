"""PointRefer (Li et al., "LASO: Language-guided Affordance Segmentation on 3D Object",
CVPR 2024): question-conditioned per-point affordance heatmaps.

A text encoder embeds the question (padded to `text_tokens` tokens), a PointNet++ MSG encoder
embeds the cloud; one shared adaptive fusion block (text tokens group, mix and scatter back
the point features) runs after the last set abstraction and after the two coarser feature
propagations; a one-layer transformer decoder turns the text tokens into queries over the
full-resolution point features, and the heatmap is the sigmoid of the mean over valid
tokens of the query-point dot products.

The function is the reference's (`model/PointRefer.py` of the LASO repository); parameter
names follow it where our modules allow (see `affcli.nn.attention` / `affcli.nn.fusion`):
the reference's `gpb` is `fusion` here, its PointNet++ convolutions are the Linear layers
of `affcli.nn.pointnet2`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from affcli import ops
from affcli.losses import heatmap_loss
from affcli.models import register
from affcli.models.backbones import DEFAULT_TEXT_MODEL, load_text_model, load_tokenizer
from affcli.models.base import AffordanceModel, AffordanceOutput
from affcli.models.config import ModelConfig
from affcli.models.inputs import ModelInput
from affcli.nn.attention import TransformerDecoder, TransformerDecoderLayer
from affcli.nn.fusion import AdaptiveFusionBlock
from affcli.nn.pointnet2 import EncoderConfig, FeaturePropagation, PointNet2Encoder
from affcli.nn.precision import full_precision

POINT_DIM = 512  # width of the sa3 / fp3 / fp2 / fp1 features (fixed by the reference)


def tokenize_questions(tokenizer: Any, questions: Sequence[str], text_tokens: int
                       ) -> dict[str, torch.Tensor]:
    """PointRefer's tokenisation (`PointRefer.tokenize`), usable with the tokenizer alone
    (e.g. to feed an exported graph): int64 input_ids / attention_mask [B, text_tokens]."""
    batch = tokenizer(list(questions), padding="max_length", truncation=True,
                      max_length=text_tokens, return_tensors="pt")
    return {k: batch[k].long() for k in ("input_ids", "attention_mask")}


@dataclass
class PointReferConfig(ModelConfig):
    """PointRefer's hyper-parameters (the reference's defaults; its paper uses roberta-base
    as the text encoder, the offline default here is the packaged MiniLM)."""

    model_type = "pointrefer"

    emb_dim: int = 512
    proj_dim: int = 512  # kept for parity with the reference's signature; unused there too
    num_heads: int = 4
    n_points: int = 2048  # N_raw, the cloud size the model is trained on
    n_p: int = 64  # N_p, centres of the last set abstraction
    num_affordance: int = 18  # unused by the forward (the reference's class head is disabled)
    text_tokens: int = 40  # n_groups: questions are padded / truncated to this many tokens
    text_encoder: str = DEFAULT_TEXT_MODEL
    freeze_text_encoder: bool = False
    fps_start: int | None = 0  # first FPS index; None draws it at random like the reference
    extra_channels: int = 0  # per-point input channels after xyz (3 with normals)
    # The reference's focal term takes the probabilities: where the unscaled query-point dot
    # products saturate the sigmoid (exactly 1 in float32 past a logit of ~17; near 0 its 1e-6
    # inside the log takes over) it has no gradient, or a vanishing one, and a cloud scored
    # all 1 (or all 0) stays so. True takes it from the logits instead: the same
    # loss, with a gradient there (short, fast-moving trainings such as `make demo`).
    focal_from_logits: bool = False


@register("pointrefer", PointReferConfig)
class PointRefer(AffordanceModel):
    """forward(points [B, N, 3 + extra], questions: list of B str) -> AffordanceOutput with
    heatmap [B, N] in [0, 1] and extras["logits"] [B, N] (before the sigmoid)."""

    config_class = PointReferConfig
    inputs = (ModelInput(
        "question", "text", "the question about the object's affordance",
        example="Where would you grasp this mug?",
        samples=("Where would you grasp this mug to lift it up?",
                 "Which part of the chair can a person sit on?",
                 "Where can this bottle be opened?",
                 "Which region of the knife is used for cutting bread?")),)
    dataset_kinds = ("laso",)
    graph_inputs = ("points", "input_ids", "attention_mask")
    # the official checkpoint: the fusion block is `gpb` there, and its never-called
    # `out_head` has no counterpart; the text encoder's keys map by prefix (they fit only
    # when `text_encoder` names the same model: roberta-base for the released checkpoints)
    official_key_rules = ((r"^gpb\.", "fusion."),)
    official_dropped_prefixes = ("out_head.",)
    # LASO's train.py: Adam, the text encoder at its own rate, StepLR(10, 0.5), batch 16;
    # best.pt by IoU; the final test averages 3 passes seeded 0, 1, 2 (random FPS starts)
    train_recipe = {"epochs": 50, "batch_size": 16, "lr": 1e-4, "text_lr": 5e-6,
                    "weight_decay": 1e-3, "optimizer": "adam", "scheduler": "step",
                    "step_size": 10, "gamma": 0.5, "select_by": "aiou", "votes": 3}

    def forward_batch(self, batch: dict[str, Any], points: torch.Tensor) -> AffordanceOutput:
        return self(points, batch["question"])

    def loss(self, output: AffordanceOutput, target: torch.Tensor, batch: dict[str, Any]
             ) -> torch.Tensor:
        logits = output.extras["logits"] if self.config.focal_from_logits else None
        return heatmap_loss(output.heatmap, target, logits)

    def optimizer_groups(self, lr: float, weight_decay: float, text_lr: float | None = None
                         ) -> list[dict[str, Any]]:
        text = [p for p in self.text_encoder_parameters() if p.requires_grad]
        groups = [{"params": [p for p in self.other_parameters() if p.requires_grad],
                   "lr": lr, "weight_decay": weight_decay}]
        if text:
            groups.append({"params": text, "lr": lr if text_lr is None else text_lr,
                           "weight_decay": weight_decay})
        return groups

    def __init__(self, config: PointReferConfig) -> None:
        super().__init__(config)
        cfg = config
        if cfg.emb_dim != POINT_DIM:
            # the fusion block adds text tokens to point features and the decoder's memory is
            # fp1's 512-channel output, so the reference only works with emb_dim = 512
            raise ValueError(f"PointRefer needs emb_dim == {POINT_DIM}, got {cfg.emb_dim}")
        self.text_encoder, self.tokenizer = load_text_model(cfg.text_encoder, native=True)
        if cfg.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        hidden = self.text_encoder.config.hidden_size
        self.text_resizer = nn.Sequential(nn.Linear(hidden, cfg.emb_dim),
                                          nn.LayerNorm(cfg.emb_dim, eps=1e-12))

        self.point_encoder = PointNet2Encoder(EncoderConfig(
            num_points=cfg.n_points, extra_channels=cfg.extra_channels, sa3_centers=cfg.n_p,
            fps_start=cfg.fps_start))
        c0, c1, c2, c3 = self.point_encoder.out_channels

        self.pos1d = nn.Parameter(torch.zeros(1, cfg.text_tokens, cfg.emb_dim))
        nn.init.trunc_normal_(self.pos1d, std=0.2)
        self.fusion = AdaptiveFusionBlock(POINT_DIM, cfg.text_tokens, text_dim=cfg.emb_dim)
        self.decoder = TransformerDecoder(
            [TransformerDecoderLayer(cfg.emb_dim, cfg.num_heads, dropout=0.0)],
            norm=nn.LayerNorm(cfg.emb_dim))

        self.fp3 = FeaturePropagation(c2 + POINT_DIM, [768, 512])  # 512 + emb_dim
        self.fp2 = FeaturePropagation(c1 + 512, [768, 512])  # 832
        self.fp1 = FeaturePropagation(3 + c0 + 512, [512, 512])  # 518 + extra channels
        # The reference also builds `out_head` (Linear-BN-ReLU-Linear) but never calls it in
        # forward. It is left out: it has no effect on the output, would receive no gradient,
        # and a checkpoint converter simply drops the `out_head.*` keys.

    # ------------------------------------------------------------------ parameter groups

    def text_encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The text encoder's parameters (its own learning rate; frozen ones included, they
        have requires_grad False)."""
        return self.text_encoder.parameters()

    def other_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the text encoder."""
        own = {id(p) for p in self.text_encoder.parameters()}
        return (p for p in self.parameters() if id(p) not in own)

    # ------------------------------------------------------------------ forward

    def tokenize(self, questions: Sequence[str], device: torch.device | None = None
                 ) -> dict[str, torch.Tensor]:
        """{'input_ids', 'attention_mask'}: int64 [B, text_tokens] (padded / truncated to the
        fixed token count the fusion block's token mixer needs; mask 1 = real token). The
        tensor half of the model (`forward_tokens`) starts from these, so an exported graph
        takes them as inputs and the tokenizer runs outside it."""
        out = tokenize_questions(self.tokenizer, questions, self.config.text_tokens)
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    @classmethod
    def tokenize_texts(cls, config: PointReferConfig, texts: Sequence[str]
                       ) -> dict[str, torch.Tensor]:
        return tokenize_questions(load_tokenizer(config.text_encoder, native=True), texts,
                                  config.text_tokens)

    def graph_forward(self, points: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(points, input_ids, attention_mask).heatmap

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, T, emb_dim], attention mask [B, T] bool, True = real token). Token type
        ids are left to the text model's default (all zeros, as the tokenizer gives for one
        sequence)."""
        frozen = self.config.freeze_text_encoder
        repeats = None
        if not self.training and input_ids.shape[0] > 1 and not ops.exporting():
            # the same question for many clouds (predict, evaluation): encode it once
            ids = torch.cat([input_ids, attention_mask], dim=1)
            unique, repeats = torch.unique(ids, dim=0, return_inverse=True)
            if len(unique) == len(ids):
                repeats = None
            else:
                input_ids, attention_mask = unique.split(input_ids.shape[1], dim=1)
        with torch.no_grad() if frozen else contextlib.nullcontext():
            hidden = self.text_encoder(input_ids=input_ids,
                                       attention_mask=attention_mask).last_hidden_state
        tokens, valid = self.text_resizer(hidden), attention_mask.bool()
        if repeats is not None:
            tokens, valid = tokens[repeats], valid[repeats]
        return tokens, valid

    def forward(self, points: torch.Tensor, questions: Sequence[str]) -> AffordanceOutput:
        if isinstance(questions, str) or not all(isinstance(q, str) for q in questions):
            raise ValueError("questions must be a list of strings, one per cloud")
        if points.dim() != 3:
            raise ValueError(f"points must have shape [B, N, C], got {list(points.shape)}")
        if len(questions) != points.shape[0]:
            raise ValueError(f"{points.shape[0]} point clouds but {len(questions)} questions")
        text = self.tokenize(questions, points.device)
        return self.forward_tokens(points, text["input_ids"], text["attention_mask"])

    def encode_points(self, points: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The point encoder's levels: the half of the forward no question enters."""
        return self.point_encoder(points)

    def forward_encoded(self, batch: dict[str, Any], encoded: Any) -> AffordanceOutput:
        text = self.tokenize(batch["question"], encoded[0][0].device)
        return self.decode(encoded, text["input_ids"], text["attention_mask"])

    def forward_tokens(self, points: torch.Tensor, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> AffordanceOutput:
        """The forward from tokenised questions (`tokenize`): tensors only, so it traces and
        exports; `forward` is this after the tokenizer."""
        return self.decode(self.point_encoder(points), input_ids, attention_mask)

    def decode(self, levels: list[tuple[torch.Tensor, torch.Tensor]], input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> AffordanceOutput:
        """Fusion, propagation and the referred-point decoder over the encoder's levels."""
        tokens, valid = self.encode_tokens(input_ids, attention_mask)
        (xyz0, f0), (xyz1, f1), (xyz2, f2), (xyz3, f3) = levels

        f3 = self.fusion(tokens, f3)
        up = self.fp3(xyz2, xyz3, f2, f3)
        up = self.fusion(tokens, up)
        up = self.fp2(xyz1, xyz2, f1, up)
        up = self.fusion(tokens, up)
        up = self.fp1(xyz0, xyz1, torch.cat([xyz0, f0], dim=-1), up)  # [B, N, 512]

        # the reference's attention takes True = valid and inverts it; ours True = padding
        queries = self.decoder(tokens, up, tgt_key_padding_mask=~valid, query_pos=self.pos1d)
        queries = queries * valid.unsqueeze(-1).to(queries.dtype)
        scores = full_precision(lambda q, u: torch.einsum("blc,bnc->bln", q, u), queries, up)
        logits = scores.sum(1) / valid.sum(1, keepdim=True).to(scores.dtype)
        return AffordanceOutput(heatmap=torch.sigmoid(logits), extras={"logits": logits})
