"""Official checkpoint key names (facts recorded in tests/fixtures) map onto our models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from affcli import models
from affcli.models.reference import convert_state_dict, iagnet_key

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_iagnet_reference_keys_all_map():
    doc = json.loads((FIXTURES / "iagnet_reference_keys.json").read_text())
    state = {k: torch.zeros(shape) for k, shape in doc["keys"].items()}
    # checkpoints saved from DistributedDataParallel carry a module. prefix
    state = {f"module.{k}": v for k, v in state.items()}
    ours_state, dropped = convert_state_dict(state, iagnet_key)
    assert dropped == ["img_encoder.model.fc.weight", "img_encoder.model.fc.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = models.build("iagnet")
    own = model.state_dict()
    assert set(ours_state) == set(own)  # every key is mapped, and nothing is missing
    bad = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in ours_state.items()
           if v.shape != own[k].shape}
    assert not bad
    model.load_state_dict(ours_state, strict=True)
