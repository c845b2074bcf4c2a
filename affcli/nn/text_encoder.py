"""A BERT / RoBERTa text encoder and its fast tokenizer, loaded without `transformers`.

PointRefer's question encoder is a BERT-family model (RoBERTa in the paper, the packaged
MiniLM by default). `transformers` builds the same network, but importing its modelling code
costs about 2.5 s on a 2-core machine (it pulls in torch._dynamo and torch.distributed), more
than loading and running the rest of a trained PointRefer; a shell loop calling
`affcli predict` once per file paid that on every call. This module is the same function in
~150 lines: the parameter names are the Hugging Face ones (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query`, ...), so checkpoints, official state dicts and
`save_pretrained` directories load unchanged, and the tokenizer is the model directory's own
`tokenizer.json` run by the `tokenizers` library (what a Hugging Face fast tokenizer wraps).

`load_local_encoder` returns None for anything outside that family (other architectures,
sharded weights, a directory without `tokenizer.json`); the caller then falls back to
`transformers.AutoModel`. Tests compare both against `transformers` on the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("bert", "roberta")  # RoBERTa differs only in where positions start
ACTIVATIONS = {"gelu": nn.GELU, "gelu_new": lambda: nn.GELU(approximate="tanh"),
               "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU,
               "silu": nn.SiLU, "swish": nn.SiLU}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TextEncoderConfig:
    """The fields of a Hugging Face BERT / RoBERTa config.json that shape the network."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf(cls, doc: dict[str, Any]) -> TextEncoderConfig | None:
        """The config of a config.json, or None when this module does not build that model
        exactly (another family, relative positions, a decoder, an unknown activation)."""
        if (doc.get("model_type") not in FAMILIES
                or doc.get("position_embedding_type", "absolute") != "absolute"
                or doc.get("is_decoder") or doc.get("add_cross_attention")
                or doc.get("hidden_act", "gelu") not in ACTIVATIONS
                or int(doc.get("hidden_size", 768)) % int(doc.get("num_attention_heads", 12))):
            return None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names and v is not None})


class _SelfAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query), split(self.key), split(self.value)
        # padding keys get the most negative value of the products' dtype added (as Hugging
        # Face does, and in that dtype so autocast works): an all-padding row stays finite
        bias = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~valid, torch.finfo(q.dtype).min)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, t, c)


class _DenseNorm(nn.Module):
    """dense -> dropout -> LayerNorm(. + residual): the two output blocks of a layer."""

    def __init__(self, cfg: TextEncoderConfig, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _DenseNorm(cfg, cfg.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = ACTIVATIONS[cfg.hidden_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, valid), x)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        pad = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=pad)
        self.position_embeddings = nn.Embedding(
            cfg.max_position_embeddings, cfg.hidden_size,
            padding_idx=pad if cfg.model_type == "roberta" else None)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.roberta = cfg.model_type == "roberta"
        self.pad = pad

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None
                ) -> torch.Tensor:
        if self.roberta:
            # RoBERTa numbers real tokens from pad + 1 and gives padding the pad position
            real = input_ids.ne(self.pad).long()
            positions = torch.cumsum(real, dim=1) * real + self.pad
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(positions))
        return self.dropout(self.LayerNorm(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _Pooler(nn.Module):
    """Unused by affcli's models; kept so state dicts keep every key of the pretrained
    model (and official checkpoints, which carry it, load strictly)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class TextEncoder(nn.Module):
    """BERT / RoBERTa without heads: `(input_ids, attention_mask)` [B, T] ->
    `.last_hidden_state` [B, T, hidden_size], as `transformers.AutoModel` returns it."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        x = self.embeddings(input_ids, token_type_ids)
        valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                 else attention_mask.bool())
        for layer in self.encoder.layer:
            x = layer(x, valid)
        return SimpleNamespace(last_hidden_state=x)


def read_weights(directory: Path) -> dict[str, torch.Tensor] | None:
    """The model directory's weights (safetensors, else a torch file loaded with
    weights_only=True) without a `bert.` / `roberta.` prefix; None when it has neither."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        prefixes = tuple(f"{family}." for family in FAMILIES)
        return {(k.split(".", 1)[1] if k.startswith(prefixes) else k): v
                for k, v in state.items()}
    return None


class FastTokenizer:
    """A model directory's `tokenizer.json`, called like a Hugging Face fast tokenizer for
    what affcli asks of one: `tok(texts, padding="max_length", truncation=True,
    max_length=L, return_tensors="pt")` -> {'input_ids', 'attention_mask'} int64 [B, L]."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        pad = _pad_token(directory) or "[PAD]"
        pad_id = self.backend.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"pad token {pad!r} is not in the vocabulary")
        self.pad_token, self.pad_token_id = pad, pad_id

    def __call__(self, texts: list[str], padding: str = "max_length", truncation: bool = True,
                 max_length: int | None = None, return_tensors: str = "pt"
                 ) -> dict[str, torch.Tensor]:
        if padding != "max_length" or not truncation or max_length is None or \
                return_tensors != "pt":
            raise ValueError("FastTokenizer pads and truncates to max_length only")
        self.backend.enable_truncation(max_length)
        self.backend.enable_padding(length=max_length, pad_id=self.pad_token_id,
                                    pad_token=self.pad_token)
        encoded = self.backend.encode_batch(list(texts))
        return {"input_ids": torch.tensor([e.ids for e in encoded], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in encoded],
                                               dtype=torch.long)}


def _pad_token(directory: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            pad = json.loads((directory / name).read_text()).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(pad, dict):  # an AddedToken written out
            pad = pad.get("content")
        if isinstance(pad, str):
            return pad
    return None


def _lowercases_as_configured(directory: Path, tokenizer: FastTokenizer) -> bool:
    """Whether tokenizer.json's normaliser lowercases as tokenizer_config.json says; a
    Hugging Face BERT tokenizer rewrites the normaliser when they differ, which this class
    does not, so such a directory is left to `transformers`."""
    try:
        wanted = json.loads((directory / "tokenizer_config.json").read_text()).get(
            "do_lower_case")
        normalizer = json.loads(tokenizer.backend.to_str()).get("normalizer") or {}
    except (OSError, ValueError, AttributeError):
        return True
    if wanted is None or normalizer.get("type") != "BertNormalizer":
        return True
    return bool(normalizer.get("lowercase")) == bool(wanted)


def local_tokenizer(directory: str | Path) -> FastTokenizer | None:
    """The directory's `tokenizer.json` as a FastTokenizer, or None when it has none (or one
    that `transformers` would adjust on loading)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        return None
    try:
        tokenizer = FastTokenizer(directory)
    except Exception:  # unreadable or unusual: transformers' loader reports it properly
        return None
    return tokenizer if _lowercases_as_configured(directory, tokenizer) else None


def load_local_encoder(directory: str | Path, pretrained: bool = True
                       ) -> tuple[TextEncoder, FastTokenizer] | None:
    """(encoder with the directory's weights in eval mode, tokenizer), or None when the
    directory holds something this module does not build exactly. `pretrained` False: the
    network only (its weights come from elsewhere, a checkpoint)."""
    directory = Path(directory)
    try:
        doc = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = TextEncoderConfig.from_hf(doc) if isinstance(doc, dict) else None
    tokenizer = local_tokenizer(directory) if config is not None else None
    if config is None or tokenizer is None:
        return None
    if not pretrained:
        return TextEncoder(config).eval(), tokenizer
    state = read_weights(directory)
    if state is None:
        return None
    model = TextEncoder(config)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}  # heads (MLM, ...) are not ours
    missing = [k for k in own if k not in state and not k.startswith("pooler.")]
    if missing or any(state[k].shape != own[k].shape for k in state):
        return None
    model.load_state_dict(state, strict=False)  # a checkpoint without pooler keeps its init
    return model.eval(), tokenizer

