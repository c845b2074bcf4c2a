"""The model registry, configs, the pretrained round trip, and the offline backbones."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch
from torch import nn

from affcli import models
from affcli.errors import AffError
from affcli.models.backbones import load_text_model, packaged_minilm_path, resnet18
from affcli.models.base import AffordanceModel, AffordanceOutput
from affcli.models.config import ModelConfig


@dataclasses.dataclass
class TinyConfig(ModelConfig):
    model_type = "tiny-test"
    width: int = 8
    layers: tuple[int, ...] = (4, 2)


class Tiny(AffordanceModel):
    """A small real model, registered only while this module's tests run (other tests see
    only the real models), to exercise the registry machinery."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        dims = [3, config.width, *config.layers, 1]
        self.net = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False)])
        self.norm = nn.BatchNorm1d(config.width)

    def forward(self, points: torch.Tensor) -> AffordanceOutput:
        return AffordanceOutput(heatmap=torch.sigmoid(self.net(points)).squeeze(-1))


@pytest.fixture(scope="module", autouse=True)
def tiny_registered():
    models.register("tiny-test", TinyConfig)(Tiny)
    yield
    models.unregister("tiny-test")
    assert "tiny-test" not in models.available()


def test_build_overrides_and_unknown():
    m = models.build("tiny-test", width=5, layers=[3])
    assert m.config.width == 5 and m.config.layers == (3,)
    with pytest.raises(AffError, match="unknown tiny-test config field"):
        models.build("tiny-test", depth=3)
    with pytest.raises(AffError, match="unknown model 'nosuch'"):
        models.build("nosuch")
    assert "tiny-test" in models.available()


def test_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    m = models.build("tiny-test", width=6).eval()
    m.norm.running_mean.add_(0.5)  # buffers travel too
    m.save_pretrained(tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc == {"model_type": "tiny-test", "width": 6, "layers": [4, 2]}
    back = models.from_pretrained(tmp_path / "run").eval()
    assert isinstance(back, Tiny) and back.config == m.config
    x = torch.rand(2, 50, 3)
    assert torch.equal(m(x).heatmap, back(x).heatmap)
    assert torch.equal(back.norm.running_mean, m.norm.running_mean)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert isinstance(Tiny.from_pretrained(tmp_path / "run"), Tiny)


def test_pretrained_errors(tmp_path):
    with pytest.raises(AffError, match="no config.json"):
        models.from_pretrained(tmp_path)
    m = models.build("tiny-test")
    d = m.save_pretrained(tmp_path / "a")
    (d / "config.json").write_text(json.dumps({"model_type": "tiny-test", "width": 9}))
    with pytest.raises(AffError, match="wrong shape"):
        models.from_pretrained(d)
    (d / "config.json").write_text("{broken")
    with pytest.raises(AffError, match="malformed JSON"):
        models.from_pretrained(d)
    d2 = m.save_pretrained(tmp_path / "b")
    (d2 / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AffError, match="unreadable safetensors"):
        models.from_pretrained(d2)


def test_packaged_text_model_loads_offline():
    model, tok = load_text_model(None)
    assert packaged_minilm_path().is_dir()
    enc = tok(["which part of the mug can be grasped?", "sit"], padding="max_length",
              max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    assert out.shape == (2, 12, model.config.hidden_size) and torch.isfinite(out).all()
    # real pretrained weights: related phrases are closer than unrelated ones
    texts = ["grasp the handle of the mug", "hold the mug by its handle",
             "the weather is sunny today"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1)
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_text_model_errors(tmp_path):
    with pytest.raises(AffError, match="no downloads"):
        load_text_model("some-org/not-cached-model-xyz")
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(AffError, match="is a file"):
        load_text_model(str(f))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_resnet18_weights(tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        net = resnet18()
    state = net.state_dict()
    plain = tmp_path / "r18.pth"
    torch.save(state, plain)
    assert torch.equal(resnet18(plain).conv1.weight, net.conv1.weight)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items() if
                               not k.startswith("fc.")}}, wrapped)
    assert torch.equal(resnet18(wrapped).layer4[1].bn2.weight, net.layer4[1].bn2.weight)
    with pytest.raises(AffError, match="not found"):
        resnet18(tmp_path / "missing.pth")
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(AffError, match="not a loadable ResNet18 weights file"):
        resnet18(bad)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(AffError, match="not ResNet18 weights"):
        resnet18(other)
