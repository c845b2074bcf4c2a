"""LMAffordance3D with decoder-only language models (tiny random Llama, OPT and LLaVA-format
directories built offline): the reference's tokenisation, precision, training, the pretrained
round trip and official-checkpoint import without language-model weights."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from affcli import losses, models
from affcli.errors import AffError
from affcli.models import language

N = 512  # points; the head's BatchNorm fixes it per model
SENTENCES = ["Grasp the mug by its handle.", "Please sit on the chair like the person in it.",
             "Pour water out of the bottle.", "Move it to the left.", "Open the door wide.",
             "Lift the bag by the strap and carry it away from the table."]
SHORT, LONG = "Lift the bag.", "Please sit on the chair like the person in the picture."
FIXTURES = Path(__file__).parents[1] / "fixtures"


def _train_bpe(special: list[str], byte_level: bool):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tmodels

    tok = Tokenizer(tmodels.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    tok.train_from_iterator(SENTENCES * 2, trainers.BpeTrainer(
        vocab_size=len(alphabet) + 150, special_tokens=special, initial_alphabet=alphabet))
    return tok


def _llama_dir(root: Path) -> Path:
    """A random 2-layer Llama (hidden 64) and a Llama-style BPE tokenizer with no pad token."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = _train_bpe(["<unk>", "<s>", "</s>"], byte_level=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, pad_token_id=None))
    out = root / "llama"
    lm.save_pretrained(out)
    hf.save_pretrained(out)
    return out


def _opt_dir(root: Path) -> Path:
    """A random 2-layer OPT and a GPT-2-style byte-level tokenizer that prepends </s>."""
    from tokenizers import processors
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    tok = _train_bpe(["<s>", "<pad>", "</s>", "<unk>"], byte_level=True)
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B",
        special_tokens=[("</s>", tok.token_to_id("</s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                 unk_token="</s>", pad_token="<pad>")
    torch.manual_seed(1)
    lm = OPTForCausalLM(OPTConfig(
        vocab_size=len(hf), hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=256,
        pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id))
    out = root / "opt"
    lm.save_pretrained(out)
    hf.save_pretrained(out)
    return out


def _llava_llama_dir(root: Path, llama: Path) -> Path:
    """The tiny Llama in the original LLaVA layout: model_type llava_llama, mm_* config
    fields, and vision tower / projector weights the language model must ignore."""
    from safetensors.torch import load_file, save_file

    out = root / "llava"
    shutil.copytree(llama, out)
    doc = json.loads((out / "config.json").read_text())
    doc.update(model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
               mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
               mm_vision_tower="openai/clip-vit-large-patch14-336")
    (out / "config.json").write_text(json.dumps(doc))
    state = load_file(str(out / "model.safetensors"))
    state["model.mm_projector.0.weight"] = torch.randn(64, 32)
    state["model.vision_tower.vision_tower.embeddings.class_embedding"] = torch.randn(32)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _llava_hf_dir(root: Path, llama: Path, layout: str) -> Path:
    """The tiny Llama inside a transformers-format LLaVA (tiny CLIP tower, projector), its
    weights saved under `language_model.model.*` (layout "old") or `model.language_model.*`
    ("new", transformers >= 4.52)."""
    from safetensors.torch import save_file
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=28, patch_size=14)
    lm = LlamaForCausalLM.from_pretrained(llama)
    state = {f"language_model.model.{k}": v for k, v in lm.model.state_dict().items()}
    state["language_model.lm_head.weight"] = lm.lm_head.weight.detach()
    torch.manual_seed(2)
    full = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=LlamaConfig.from_pretrained(llama), image_token_index=5))
    for k, v in full.state_dict().items():
        if "language_model" not in k and "lm_head" not in k:
            state[k.removeprefix("model.")] = v
    out = root / f"llava_hf_{layout}"
    full.config.save_pretrained(out)
    AutoTokenizer.from_pretrained(llama).save_pretrained(out)
    if layout == "new":
        state = {("lm_head.weight" if k == "language_model.lm_head.weight" else
                  "model.language_model." + k.removeprefix("language_model.model.")
                  if k.startswith("language_model.model.") else "model." + k): v
                 for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def lm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    llama = _llama_dir(root)
    return {"llama": llama, "opt": _opt_dir(root), "llava": _llava_llama_dir(root, llama)}


def _build(lm: Path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random ResNet18 init is expected here
        torch.manual_seed(0)
        return models.build("lmaffordance3d", language_model=str(lm), n_points=N, **kw)


@pytest.fixture(scope="session")
def llama_model(lm_dirs):
    return _build(lm_dirs["llama"])


def _batch(texts=(SHORT, LONG), seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(texts)
    points = torch.rand(b, N, 3, generator=g) * 2 - 1
    image = torch.randn(b, 3, 64, 64, generator=g)
    mask = (points[..., 0] > 0).float()
    return points, image, list(texts), mask


def test_families_and_settings(lm_dirs):
    assert language.detect_family(str(lm_dirs["llama"])) == "decoder"
    assert language.detect_family(str(lm_dirs["opt"])) == "decoder"
    assert language.detect_family(str(lm_dirs["llava"])) == "llava_llama"
    assert language.detect_family(None) == "encoder"  # the packaged MiniLM
    assert language.resolve_rules("auto", "decoder") == "reference"
    assert language.resolve_rules("auto", "encoder") == "plain"
    assert language.resolve_dtype("auto", "encoder") is None
    want = torch.float16 if torch.cuda.is_available() else torch.float32
    assert language.resolve_dtype("auto", "decoder") == want
    with pytest.raises(Exception, match="tokenizer_rules"):
        language.resolve_rules("llama", "decoder")


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_reference_token_ids(lm_dirs, name):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(lm_dirs[name])
    n_raw = len(raw)
    tok = language.load_tokenizer(str(lm_dirs[name]))
    pad = tok.convert_tokens_to_ids("[PAD]")
    special = tok.convert_tokens_to_ids("</s>")
    assert pad == n_raw == tok.pad_token_id  # a new token, even where one existed (OPT)
    assert tok.bos_token == tok.eos_token == tok.unk_token == "</s>"
    very_long = " ".join(SENTENCES)
    out = language.tokenize(tok, [SHORT, LONG, very_long], 32)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == (3, 32)
    for i, text in enumerate([SHORT, LONG, very_long]):
        body = raw(text, add_special_tokens=False)["input_ids"]
        n = int(mask[i].sum())
        assert mask[i].tolist() == [1] * n + [0] * (32 - n)  # right padding
        assert ids[i, 0] == special  # bos is </s>
        assert ids[i, 1:n].tolist() == body[-31:]  # left truncation, 32 tokens in all
        assert (ids[i, n:] == pad).all()
    assert len(raw(very_long, add_special_tokens=False)["input_ids"]) > 31  # it was truncated
    if name == "llama":  # the plain rules: the tokenizer's own, which has no pad token
        with pytest.raises(ValueError, match="padding token"):
            language.tokenize(raw, [SHORT, LONG], 32)


def test_model_tokenisation_and_embeddings(lm_dirs, llama_model):
    from transformers import AutoModel

    model = llama_model
    assert model.config.tokenizer_rules == "reference"  # resolved from auto, recorded
    assert model.language_spec.decoder and type(model.language_model).__name__ == "LlamaModel"
    text = model.tokenize([SHORT, LONG])
    assert torch.equal(text["input_ids"],
                       language.tokenize(model.tokenizer, [SHORT, LONG], 32)["input_ids"])
    emb = model.language_model.get_input_embeddings().weight
    assert emb.shape == (len(model.tokenizer), 64)
    base = AutoModel.from_pretrained(lm_dirs["llama"]).get_input_embeddings().weight
    torch.testing.assert_close(emb[:-1], base)
    torch.testing.assert_close(emb[-1], base.mean(0))  # the [PAD] row: the mean row
    assert model.adapter_up[2].out_features == 64 == model.adapter_down[0].in_features


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_forward_and_training_step(lm_dirs, llama_model, name):
    """Instructions of different lengths (a padded batch): forward, backward, one step."""
    model = llama_model if name == "llama" else _build(lm_dirs[name])
    points, image, texts, mask = _batch()
    assert not model.tokenize(texts)["attention_mask"].all()  # padded
    model.train()
    out = model(points, image, texts)
    assert out.heatmap.shape == (2, N) and out.heatmap.dtype == torch.float32
    assert torch.isfinite(out.heatmap).all()
    loss = losses.heatmap_loss(out.heatmap, mask)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.zero_grad()
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.language_model_parameters())
    assert model.adapter_up[0].weight.grad.abs().sum() > 0  # through the frozen LM
    assert model.img_encoder.model.conv1.weight.grad.abs().sum() > 0
    before = model.adapter_up[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.adapter_up[0].weight)
    opt.zero_grad()


def _half_dtype():
    """float16 where this torch runs it on the CPU, else bfloat16."""
    try:
        x = torch.randn(1, 1, 2, 4, dtype=torch.float16)
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
        torch.nn.functional.linear(x, torch.randn(4, 4, dtype=torch.float16))
        return torch.float16, "float16"
    except RuntimeError:
        return torch.bfloat16, "bfloat16"


def test_half_precision_language_model_on_cpu(lm_dirs, llama_model):
    dtype, name = _half_dtype()
    model = _build(lm_dirs["llama"], language_model_dtype=name, gradient_checkpointing=True)
    assert model.language_spec.dtype == dtype
    assert all(p.dtype == dtype for p in model.language_model_parameters())
    assert model.adapter_up[0].weight.dtype == torch.float32  # everything else float32
    lm = model.language_model
    assert getattr(lm, "is_activation_checkpointing", None) or lm.is_gradient_checkpointing
    points, image, texts, mask = _batch()
    model.train()
    out = model(points, image, texts)
    assert out.heatmap.dtype == torch.float32 and torch.isfinite(out.heatmap).all()
    losses.heatmap_loss(out.heatmap, mask).backward()
    assert model.adapter_up[0].weight.grad.abs().sum() > 0  # through the half-precision LM
    assert model.adapter_down[0].weight.grad.abs().sum() > 0
    # the language model's output: float32 back, close to the float32 model's
    seq = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0))
    att = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    with torch.no_grad():
        half = language.run_language_model(lm.eval(), model.language_spec, seq, att)
        full = language.run_language_model(llama_model.language_model.eval(),
                                           llama_model.language_spec, seq, att)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def test_pretrained_round_trip(llama_model, tmp_path):
    model = llama_model.eval()
    points, image, texts, _ = _batch()
    model.save_pretrained(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["tokenizer_rules"] == "reference" and doc["language_model_dtype"] == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = models.from_pretrained(tmp_path / "m").eval()
    assert back.language_spec == model.language_spec
    assert torch.equal(back.tokenize(texts)["input_ids"], model.tokenize(texts)["input_ids"])
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with torch.no_grad():
        assert torch.equal(model(points, image, texts).heatmap, back(points, image, texts).heatmap)
    from affcli.engine.exporter import tokenize

    assert torch.equal(tokenize(tmp_path / "m", texts)["input_ids"],
                       model.tokenize(texts)["input_ids"])


def test_llava_directory_gives_its_language_model(lm_dirs, llama_model):
    model = _build(lm_dirs["llava"])
    assert model.language_spec.family == "llava_llama"
    assert model.config.tokenizer_rules == "reference"
    ours = model.language_model.state_dict()
    plain = llama_model.language_model.state_dict()
    assert set(ours) == set(plain)  # no vision tower, no projector, no LM head
    assert all(torch.equal(ours[k], plain[k]) for k in ours)


@pytest.mark.parametrize("layout", ["old", "new"])
def test_transformers_llava_directory(lm_dirs, llama_model, tmp_path, layout):
    d = _llava_hf_dir(tmp_path, lm_dirs["llama"], layout)
    assert language.detect_family(str(d)) == "llava"
    lm, tok, spec = language.load_language_model(str(d))
    assert spec.family == "llava" and spec.rules == "reference"
    ours, plain = lm.state_dict(), llama_model.language_model.state_dict()
    assert set(ours) == set(plain)  # the language model only
    assert all(torch.equal(ours[k], plain[k]) for k in ours)
    if layout == "new":  # weights under names we do not know: refused, not left at random
        from safetensors.torch import load_file, save_file

        state = load_file(str(d / "model.safetensors"))
        save_file({k.replace("language_model", "text_model"): v for k, v in state.items()},
                  str(d / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(AffError, match="incomplete"):
            language.load_language_model(str(d))


def test_unpadded_batch_matches_single_instructions(llama_model):
    """One instruction per call (as `predict`) = the same instructions batched when none is
    padded: the [PAD] row only matters for padded batches."""
    model = llama_model.eval()
    texts = ["Lift the bag.", "Open the door."]
    assert model.tokenize(texts)["attention_mask"].all()  # equal lengths: no padding
    points, image, _, _ = _batch(texts)
    with torch.no_grad():
        both = model(points, image, texts).heatmap
        for i in range(2):
            one = model(points[i:i + 1], image[i:i + 1], texts[i:i + 1]).heatmap
            torch.testing.assert_close(one[0], both[i], atol=1e-5, rtol=0)


def _official_state(hidden: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """An official-style LMAffordance3D checkpoint for an LM of size `hidden`: the recorded
    key names, adapters resized, no language-model weights (LAVIS drops frozen ones)."""
    doc = json.loads((FIXTURES / "lmaffordance3d_reference_keys.json").read_text())
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in doc["keys"].items():
        shape = [hidden if (k.startswith("adapter_up.2") and i == 0) or
                 (k.startswith("adapter_down.0")) or (k.startswith("adapter_down.2") and i == 1)
                 else s for i, s in enumerate(shape)]
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


def test_import_checkpoint_without_language_model_weights(lm_dirs, tmp_path, run_cli):
    state = _official_state(64)
    assert state["adapter_down.2.weight"].shape == (512, 64)
    ckpt = tmp_path / "checkpoint_best.pth"
    torch.save({"model": state}, ckpt)
    llama = str(lm_dirs["llama"])
    code, out, err = run_cli("import-checkpoint", "lmaffordance3d", ckpt, "--out",
                             tmp_path / "m", "--set", f"language_model={llama}", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["weights_from"] == {"language_model": llama}
    assert "no language_model weights" in doc["notes"][0]
    assert "no language_model weights" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = models.from_pretrained(tmp_path / "m")
    sd = model.state_dict()
    torch.testing.assert_close(sd["adapter_up.2.weight"], state["adapter_up.2.weight"])
    fresh = _build(lm_dirs["llama"]).language_model.state_dict()
    assert all(torch.equal(v, fresh[k.removeprefix("language_model.")])
               for k, v in sd.items() if k.startswith("language_model."))
    # adapters sized for another language model: the error says which sizes disagree
    torch.save(_official_state(96), ckpt)
    code, _, err = run_cli("import-checkpoint", "lmaffordance3d", ckpt, "--out",
                           tmp_path / "m2", "--set", f"language_model={llama}")
    assert code == 2 and "hidden size 96" in err and "64" in err


def test_minilm_default_unchanged():
    """The encoder path keeps its settings: MiniLM, plain rules, float32, no autocast."""
    spec = language.load_language_model(None)[2]
    assert spec == language.LanguageSpec("encoder", "plain", torch.float32)
