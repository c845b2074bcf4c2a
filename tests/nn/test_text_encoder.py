"""affcli's own BERT / RoBERTa text encoder and fast tokenizer against `transformers`.

PointRefer runs its question encoder through `affcli.nn.text_encoder` (no `transformers`
import at start-up); these tests hold it to the Hugging Face function: the same tokens, the
same hidden states and gradients on the same weights, and a fall-back to `transformers` for
whatever the module does not build exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from affcli.models.backbones import load_text_model, packaged_minilm_path
from affcli.nn.text_encoder import (
    TextEncoder,
    TextEncoderConfig,
    load_local_encoder,
    local_tokenizer,
)

TEXTS = ["Where would you grasp this mug?", "", "  Ünïcödé ACCENTS café 中文字符 naïve!! ",
         "word " * 100, "Sit\tdown\non the chair.", "[PAD] [CLS] pour it"]


def test_minilm_tokens_and_hidden_states_equal_transformers():
    from transformers import AutoModel, AutoTokenizer

    path = packaged_minilm_path()
    loaded = load_local_encoder(path)
    assert loaded is not None, "the packaged MiniLM must load natively"
    ours, tokenizer = loaded
    theirs = AutoModel.from_pretrained(path, local_files_only=True).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for length in (40, 8):  # 8 truncates most of the texts
        got = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt")
        want = hf_tokenizer(TEXTS, padding="max_length", truncation=True, max_length=length,
                            return_tensors="pt")
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    with torch.no_grad():
        a = ours(**got).last_hidden_state
        b = theirs(**got).last_hidden_state
    assert a.shape == (len(TEXTS), 8, 384)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_forward_and_gradients_equal_transformers(family):
    """Random weights, float64, padded rows: train mode without dropout gives the same
    outputs and parameter gradients; with dropout, two passes differ (it is applied)."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    roberta = family == "roberta"
    fields = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 48,
              "max_position_embeddings": 40, "type_vocab_size": 1 if roberta else 2,
              "pad_token_id": 1 if roberta else 0, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    torch.manual_seed(0)
    theirs = (RobertaModel(RobertaConfig(**fields)) if roberta
              else BertModel(BertConfig(**fields))).double().train()
    config = TextEncoderConfig.from_hf({"model_type": family, **fields})
    assert config is not None
    ours = TextEncoder(config).double().train()
    ours.load_state_dict(theirs.state_dict(), strict=True)

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 60, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    for row, length in enumerate((12, 7, 3)):  # padded at the end, as the tokenizer pads
        ids[row, length:], mask[row, length:] = fields["pad_token_id"], 0
    weights = torch.randn(3, 12, 32, generator=gen, dtype=torch.float64)

    outs, grads = [], []
    for model in (ours, theirs):
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert (outs[0] - outs[1]).abs().max() < 1e-10
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for key, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][key], atol=1e-10), key

    dropping = TextEncoder(TextEncoderConfig.from_hf(
        {"model_type": family, **fields, "hidden_dropout_prob": 0.3})).train()
    first = dropping(ids, mask).last_hidden_state
    assert not torch.equal(first, dropping(ids, mask).last_hidden_state)
    dropping.eval()
    assert torch.equal(dropping(ids, mask).last_hidden_state,
                       dropping(ids, mask).last_hidden_state)


def _copy(src: Path, dst: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "config.json").read_text())
    doc.update(config_changes)
    (dst / "config.json").write_text(json.dumps(doc))
    return dst


def test_other_models_fall_back_to_transformers(tmp_path):
    """What the module does not build exactly is left to `transformers`: relative
    positions, another family, no tokenizer.json, a tokenizer.json that disagrees with
    tokenizer_config.json about lowercasing (Hugging Face would rewrite it)."""
    src = packaged_minilm_path()
    relative = _copy(src, tmp_path / "relative", position_embedding_type="relative_key")
    assert load_local_encoder(relative) is None
    assert load_local_encoder(_copy(src, tmp_path / "other", model_type="distilbert")) is None
    no_json = _copy(src, tmp_path / "no-json")
    (no_json / "tokenizer.json").unlink()
    assert load_local_encoder(no_json) is None and local_tokenizer(no_json) is None
    cased = _copy(src, tmp_path / "cased")
    tok_config = json.loads((cased / "tokenizer_config.json").read_text())
    (cased / "tokenizer_config.json").write_text(json.dumps({**tok_config,
                                                             "do_lower_case": False}))
    assert local_tokenizer(cased) is None

    model, _ = load_text_model(str(relative), native=True)
    assert type(model).__module__.startswith("transformers.")  # its own BertModel
    native, _ = load_text_model(str(src), native=True)
    assert isinstance(native, TextEncoder)
