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

The paper's language model is a frozen LLaVA-v1.6-Vicuna-7B in float16; `language_model=`
takes any `transformers` model directory that accepts `inputs_embeds` (its base model's last
hidden state is used): encoders, decoder-only LMs and LLaVA directories (loading, the
reference's tokenisation and precision: `affcli/models/language.py`). The default is the
packaged MiniLM so that it runs offline on a laptop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from affcli.models import language, register
from affcli.models.backbones import DEFAULT_TEXT_MODEL
from affcli.models.base import AffordanceOutput, ImagePointConfig, ImagePointModel, PointHead
from affcli.models.inputs import ModelInput
from affcli.nn.alignment import AffordanceRevealed, JointRegionAlignment
from affcli.nn.precision import full_precision


def tokenize_instructions(tokenizer: Any, instructions: Sequence[str], text_tokens: int
                          ) -> dict[str, torch.Tensor]:
    """LMAffordance3D's tokenisation (`LMAffordance3D.tokenize`), usable with the tokenizer
    alone (e.g. to feed an exported graph): int64 input_ids / attention_mask [B, L]."""
    return language.tokenize(tokenizer, instructions, text_tokens)


# the tokenizer alone, prepared by the config's rules: what an exported graph's inputs need
cached_tokenizer = functools.lru_cache(maxsize=4)(language.load_tokenizer)


@dataclasses.dataclass
class LMAffordance3DConfig(ImagePointConfig):
    """n_points is fixed: the head normalises over the points axis."""

    model_type = "lmaffordance3d"
    text_tokens: int = 32  # max_txt_len
    language_model: str = DEFAULT_TEXT_MODEL
    freeze_language_model: bool = True
    # "auto": the reference's rules ([PAD] added, bos/eos/unk = </s>) for decoder-only LMs,
    # the tokenizer's own for encoders; resolved when built, so config.json records it
    tokenizer_rules: str = "auto"
    # "auto": float16 for decoder-only LMs on a CUDA machine, else float32; or float16,
    # bfloat16, float32 (the frozen LM's weights, loaded directly in it)
    language_model_dtype: str = "auto"
    gradient_checkpointing: bool = False  # through the language model's layers


@register("lmaffordance3d", LMAffordance3DConfig)
class LMAffordance3D(ImagePointModel):
    config_class = LMAffordance3DConfig
    inputs = (
        ModelInput("image", "image", "the interaction image (JPEG or PNG)",
                   example="interaction.jpg"),
        ModelInput("instruction", "text", "the instruction",
                   example="Pick up the mug by its handle.",
                   samples=("Grasp the mug by its handle.",
                            "Please sit on the chair like the person in the picture.",
                            "Open the bottle.",
                            "Cut the bread with the blade of the knife, holding it by the "
                            "handle.")),
    )
    dataset_kinds = ("agpil",)
    fixed_point_count = True
    # the reference's PointNet2_utils adds 0.01 (not 1e-8) to the squared distances of the
    # feature propagations (tests/models/test_golden_outputs.py checks against it)
    interpolation_eps = 0.01
    graph_inputs = ("points", "image", "input_ids", "attention_mask")
    official_key_rules = (
        (r"^fusion\.mlp\.", "fusion.to_common."),
        (r"^fusion\.img_attention\.", "fusion.i_atten."),
        (r"^fusion\.point_attention\.", "fusion.p_atten."),
        (r"^fusion\.joint_attention\.", "fusion.joint_atten."),
        (r"^affordance_decoder\.cross_atten\.", "affordance_decoder."),
        (r"^head\.out_head\.0\.", "out_head.fc1."),
        (r"^head\.out_head\.1\.", "out_head.norm."),
        (r"^head\.out_head\.3\.", "out_head.fc2."),
        (r"^head\.(fp\d)\.", r"\1."),
        # the language model's own keys map by prefix; they fit only when `language_model`
        # names the model the checkpoint was trained with
        (r"^llm_model\.", "language_model."),
    )
    official_dropped_prefixes = ("img_encoder.model.fc.",)
    # LAVIS saves only parameters that require gradients: an official checkpoint holds no
    # frozen language model, which then comes from the directory `language_model` names
    official_optional_prefixes = {"language_model.": "language_model"}
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
        self.build_image_point_branch(config)
        self.language_model, self.tokenizer, self.language_spec = language.load_language_model(
            config.language_model, config.tokenizer_rules, config.language_model_dtype,
            config.gradient_checkpointing)
        config.tokenizer_rules = self.language_spec.rules
        if config.freeze_language_model:
            self.language_model.requires_grad_(False)
        hidden = self.language_model.config.hidden_size
        self.fusion = JointRegionAlignment(c, config.num_heads)
        self.adapter_up = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, hidden))
        self.adapter_down = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, c))
        self.affordance_decoder = AffordanceRevealed(c, config.proj_dim)
        self.out_head = PointHead(c, points_norm=config.n_points)

    def official_mismatch_hint(self, converted: dict[str, torch.Tensor]) -> str:
        """The adapters' size names the language model an official checkpoint was trained
        with."""
        w = converted.get("adapter_up.2.weight")
        ours = self.language_model.config.hidden_size
        if w is None or w.shape[0] == ours:
            return ""
        return (f"its adapters are sized for a language model of hidden size {w.shape[0]}; "
                f"language_model={self.config.language_model} has {ours}: pass --set "
                "language_model=DIR with the model it was trained with, e.g. 4096 for "
                "LLaVA-v1.6-Vicuna-7B")

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

    @classmethod
    def tokenize_texts(cls, config: LMAffordance3DConfig, texts: Sequence[str]
                       ) -> dict[str, torch.Tensor]:
        tokenizer = cached_tokenizer(config.language_model, config.tokenizer_rules)
        return tokenize_instructions(tokenizer, texts, config.text_tokens)

    def graph_forward(self, points: torch.Tensor, image: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(points, image, input_ids, attention_mask).heatmap

    def graph_dynamic_axes(self) -> dict[str, dict[int, tuple[str, int, int]]]:
        # at least [CLS] [SEP]; at most the configured length
        length = ("text_length", 2, self.config.text_tokens)
        return {"input_ids": {1: length}, "attention_mask": {1: length}}

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

        embeds = language.embed_tokens(self.language_model, input_ids)
        seq, mask = self._insert_tokens(embeds, attention_mask, self.adapter_up(spatial))
        # a frozen language model still passes gradients to its inputs (the adapter, the
        # fusion and both encoders train through it), so no no_grad here
        hidden = language.run_language_model(self.language_model, self.language_spec, seq, mask)
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
        heatmap = torch.sigmoid(full_precision(self.out_head,
                                               up * aff[:, :n_p].mean(1, keepdim=True)))
        return AffordanceOutput(heatmap=heatmap)
