"""The language model of LMAffordance3D: loading (encoders and decoder-only LMs, LLaVA
directories), the reference's tokenisation rules, and precision.

Encoders (the packaged MiniLM, BERT, RoBERTa) load through `backbones.load_text_model`,
unchanged. Decoder-only models (Llama/Vicuna, OPT, anything whose family has a causal-LM head
and no masked-LM head) load as their *base* model (`AutoModel`: `LlamaModel`, `OPTModel`, ...),
whose `last_hidden_state` is what the reference's modified `LlamaForCausalLM.forward` returns
(the decoder's output after its final norm; no LM head). A LLaVA directory gives its language
model only, as the reference loads it with `LlamaForCausalLM`:
- `model_type` "llava_llama" (the original LLaVA format, e.g. llava-v1.6-vicuna-7b): the
  config is a Llama config with extra `mm_*` fields; the vision tower and projector weights
  are left out;
- "llava" / "llava_next" (the transformers format, e.g. llava-v1.6-vicuna-7b-hf): the
  `text_config` model, its weights taken from the `language_model` part of the checkpoint.

The reference's tokenisation (`tokenizer_rules="reference"`, the default for decoders):
`[PAD]` added as a new pad token, bos = eos = unk = `</s>`, the token embeddings resized to the
new vocabulary, right padding, truncation from the left, at most `max_txt_len` (32) tokens.
The new `[PAD]` row is the mean of the embedding rows that existed before the resize
(deterministic; the reference draws it at random, and its checkpoints do not save it). The
token ids are built here rather than by the tokenizer's post-processor, so the slow
(sentencepiece, `use_fast=False` as the reference) and fast tokenizers give the same ids:
the special tokens the tokenizer adds around a text are found once, with the bos/eos among
them replaced by `</s>`; the text's own tokens are truncated from the left so that the total
is at most `max_txt_len`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affcli.errors import AffError

TOKENIZER_RULES = ("auto", "reference", "plain")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LLAVA_TYPES = ("llava_llama", "llava", "llava_next")
REFERENCE_PAD, REFERENCE_SPECIAL = "[PAD]", "</s>"


@dataclass(frozen=True)
class LanguageSpec:
    """How a loaded language model runs: `decoder` (decoder-only: autocast on CUDA, no KV
    cache), `rules` (resolved tokenizer rules), `dtype` (its weights' dtype)."""

    family: str  # "encoder", "decoder", "llava_llama" or "llava"
    rules: str  # "reference" or "plain"
    dtype: torch.dtype

    @property
    def decoder(self) -> bool:
        return self.family != "encoder"


# ------------------------------------------------------------------ family and settings

def _config_doc(source: str) -> dict[str, Any]:
    """The text model's config.json (a directory, or a name in the local HF cache)."""
    path = Path(source) / "config.json"
    if not path.is_file():
        try:
            from transformers.utils import cached_file

            found = cached_file(source, "config.json", local_files_only=True)
        except (OSError, ValueError):
            found = None
        if found is None:
            return {}  # load_text_model names the problem
        path = Path(found)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AffError(path, f"malformed JSON ({exc})") from None
    return doc if isinstance(doc, dict) else {}


def family_of(doc: dict[str, Any]) -> str:
    """'encoder', 'decoder', 'llava_llama' or 'llava' from a config.json's fields."""
    model_type = str(doc.get("model_type", ""))
    if model_type == "llava_llama":
        return "llava_llama"
    if model_type in LLAVA_TYPES:
        return "llava"
    from transformers.models.auto import modeling_auto as auto

    causal = model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "decoder" if causal and not masked else "encoder"


def detect_family(name_or_path: str | None) -> str:
    from affcli.models.backbones import resolve_text_model

    return family_of(_config_doc(resolve_text_model(name_or_path)))


def resolve_rules(rules: str, family: str) -> str:
    """'auto' -> 'reference' for decoder-only models (the reference's rules), else 'plain'
    (the tokenizer's own padding and special tokens, as for the encoders)."""
    if rules not in TOKENIZER_RULES:
        raise AffError("tokenizer_rules", f"must be one of {', '.join(TOKENIZER_RULES)}, "
                       f"got {rules!r}")
    if rules == "auto":
        return "plain" if family == "encoder" else "reference"
    return rules


def resolve_dtype(name: str, family: str) -> torch.dtype | None:
    """The weights' dtype. 'auto': float16 for a decoder-only model when CUDA is available
    (the reference), float32 otherwise; None (the loader's own default, as before) for an
    encoder."""
    if name == "auto":
        if family == "encoder":
            return None
        return torch.float16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise AffError("language_model_dtype", f"must be auto, {', '.join(DTYPES)}; "
                       f"got {name!r}")
    return DTYPES[name]


# ------------------------------------------------------------------ loading

@contextlib.contextmanager
def _quiet_transformers() -> Any:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype, "low_cpu_mem_usage": True}


def _load_decoder(source: str, family: str, dtype: torch.dtype) -> nn.Module:
    """`_load_decoder_with_info`, refusing a model whose weights were not all in `source`
    (transformers would leave them at random)."""
    model, info = _load_decoder_with_info(source, family, dtype)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise AffError(source, f"the language model's weights are incomplete ({len(missing)} "
                       f"missing, e.g. {', '.join(missing[:3])}); is it a {family} directory?")
    return model


def _load_decoder_with_info(source: str, family: str, dtype: torch.dtype
                            ) -> tuple[nn.Module, dict[str, Any]]:
    """The base decoder (no LM head) of a decoder-only or LLaVA directory, in `dtype`."""
    from transformers import AutoConfig, AutoModel

    kwargs = {"local_files_only": True, "output_loading_info": True, **_dtype_kwargs(dtype)}
    if family == "llava_llama":
        from transformers import LlamaConfig, LlamaModel

        doc = _config_doc(source)
        doc.pop("model_type", None)
        # vision tower and projector keys (model.mm_projector.*, model.vision_tower.*) do not
        # belong to the LlamaModel and are skipped, as LlamaForCausalLM skips them
        return LlamaModel.from_pretrained(source, config=LlamaConfig(**doc), **kwargs)
    if family == "llava":
        text_config = AutoConfig.from_pretrained(source, local_files_only=True).text_config
        # the language model's weights under either layout transformers has saved them
        # (language_model.model.* before 4.52, model.language_model.* since); the rest is
        # the vision tower and projector, skipped
        mapping = {r"^language_model\.model\.": "", r"^model\.language_model\.": "",
                   r"^language_model\.lm_head\.": "lm_head."}
        try:
            return AutoModel.from_pretrained(source, config=text_config, key_mapping=mapping,
                                             **kwargs)
        except TypeError:  # transformers without key_mapping: load it all, keep the LM
            from transformers import AutoModelForImageTextToText

            full, info = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
            inner = getattr(full, "model", full)
            lm = getattr(inner, "language_model", None) or full.language_model
            return getattr(lm, "model", lm), info
    return AutoModel.from_pretrained(source, **kwargs)


def load_language_model(name_or_path: str | None, rules: str = "auto", dtype: str = "auto",
                        gradient_checkpointing: bool = False
                        ) -> tuple[nn.Module, Any, LanguageSpec]:
    """(model, tokenizer, spec). Encoders with the default settings come from
    `load_text_model` exactly as before; decoders load as their base model in `dtype`
    (`low_cpu_mem_usage`), their tokenizer prepared by `rules`."""
    from transformers import AutoTokenizer

    from affcli.models.backbones import load_text_model, resolve_text_model

    source = resolve_text_model(name_or_path)
    family = family_of(_config_doc(source))
    rules = resolve_rules(rules, family)
    torch_dtype = resolve_dtype(dtype, family)
    if family == "encoder":
        model, tokenizer = load_text_model(name_or_path)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
    else:
        with _quiet_transformers():
            try:
                model = _load_decoder(source, family, torch_dtype)
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            except OSError as exc:
                raise AffError(source, "cannot load the language model "
                               f"({str(exc).splitlines()[0]})") from None
    if rules == "reference":
        prepare_reference_tokenizer(tokenizer)
        resize_embeddings(model, len(tokenizer))
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # gradients reach the inputs of a frozen LM
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    spec = LanguageSpec(family, rules, next(model.parameters()).dtype)
    return model, tokenizer, spec


def load_tokenizer(name_or_path: str | None, rules: str = "auto") -> Any:
    """The tokenizer alone, prepared as `load_language_model` prepares it (e.g. to tokenise
    for an exported graph)."""
    from transformers import AutoTokenizer

    from affcli.models.backbones import resolve_text_model

    source = resolve_text_model(name_or_path)
    rules = resolve_rules(rules, family_of(_config_doc(source)))
    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except OSError as exc:
            raise AffError(source, f"cannot load the tokenizer ({str(exc).splitlines()[0]})"
                           ) from None
    if rules == "reference":
        prepare_reference_tokenizer(tokenizer)
    return tokenizer


def resize_embeddings(model: nn.Module, size: int) -> None:
    """The input embeddings resized to `size` rows (the tokenizer's length, as the reference);
    new rows are the mean of the old ones."""
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if old == size:
        return
    mean = emb.weight.detach().float().mean(0)
    try:
        model.resize_token_embeddings(size, mean_resizing=False)
    except TypeError:  # transformers < 4.46
        model.resize_token_embeddings(size)
    emb = model.get_input_embeddings()
    if size > old:
        with torch.no_grad():
            emb.weight[old:] = mean.to(emb.weight.dtype)


# ------------------------------------------------------------------ tokenisation

def prepare_reference_tokenizer(tokenizer: Any) -> Any:
    """The reference's changes: `[PAD]` added as the pad token, bos = eos = unk = `</s>`.
    Records the special ids put around a text (the tokenizer's own, before the change, with
    bos/eos now `</s>`), which `tokenize` uses."""
    probe = "a b"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1)
                  if full[i:i + len(plain)] == plain), 0)
    lead, tail = full[:start], full[start + len(plain):]
    old_bos, old_eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.add_special_tokens({"pad_token": REFERENCE_PAD})
    tokenizer.add_special_tokens({"bos_token": REFERENCE_SPECIAL, "eos_token": REFERENCE_SPECIAL,
                                  "unk_token": REFERENCE_SPECIAL})
    special = tokenizer.convert_tokens_to_ids(REFERENCE_SPECIAL)
    lead = [special if i == old_bos else i for i in lead]
    tail = [special if i == old_eos else i for i in tail]
    tokenizer.affcli_reference_rules = (tuple(lead), tuple(tail))
    return tokenizer


def tokenize(tokenizer: Any, instructions: Sequence[str], max_length: int
             ) -> dict[str, torch.Tensor]:
    """int64 input_ids / attention_mask [B, L]: right padding, truncation from the left, at
    most `max_length` tokens, the longest instruction setting L. The reference's rules when
    the tokenizer was prepared for them, else the tokenizer's own call."""
    rules = getattr(tokenizer, "affcli_reference_rules", None)
    if rules is None:
        tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
        text = tokenizer(list(instructions), return_tensors="pt", padding="longest",
                         truncation=True, max_length=max_length)
        return {k: text[k].long() for k in ("input_ids", "attention_mask")}
    lead, tail = rules
    room = max(max_length - len(lead) - len(tail), 0)
    bodies = tokenizer(list(instructions), add_special_tokens=False)["input_ids"]
    rows = [[*lead, *(body[max(len(body) - room, 0):] if room else []), *tail]
            for body in bodies]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------ running

def embed_tokens(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The token embeddings [B, L, H] in float32 (the multimodal tokens join them in float32,
    as in the reference, where `torch.cat` promotes the float16 embeddings)."""
    return model.get_input_embeddings()(input_ids).float()


def run_language_model(model: nn.Module, spec: LanguageSpec | None, inputs_embeds: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
    """The last hidden state [B, L, H] in float32. Decoders in float16/bfloat16 on CUDA: the
    float32 inputs under autocast in that dtype, as the reference; elsewhere the inputs are
    cast to the weights' dtype (e.g. float16 on the CPU). No KV cache for decoders. Encoders
    in float32: the plain call, as before."""
    if spec is None or (not spec.decoder and spec.dtype == torch.float32):
        return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask
                     ).last_hidden_state.float()
    half = spec.dtype in (torch.float16, torch.bfloat16)
    extra = {"use_cache": False} if spec.decoder else {}
    if inputs_embeds.is_cuda and half and spec.decoder:
        with torch.autocast("cuda", dtype=spec.dtype):
            out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)
    else:
        out = model(inputs_embeds=inputs_embeds.to(spec.dtype), attention_mask=attention_mask,
                    **extra)
    return out.last_hidden_state.float()
