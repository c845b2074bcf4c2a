"""Official checkpoint key names (facts recorded in tests/fixtures) map onto our models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from affcli import models
from affcli.models.official import convert_state_dict, key_map

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_iagnet_reference_keys_all_map():
    doc = json.loads((FIXTURES / "iagnet_reference_keys.json").read_text())
    state = {k: torch.zeros(shape) for k, shape in doc["keys"].items()}
    # checkpoints saved from DistributedDataParallel carry a module. prefix
    state = {f"module.{k}": v for k, v in state.items()}
    ours_state, dropped = convert_state_dict(state, key_map("iagnet"))
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


def _fake_official(seed=0):
    """An official-style checkpoint: the recorded key names and shapes, random values."""
    doc = json.loads((FIXTURES / "iagnet_reference_keys.json").read_text())
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in doc["keys"].items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


def test_import_checkpoint_cli(tmp_path, run_cli):
    state = _fake_official()
    ckpt = tmp_path / "best.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {},
                "Epoch": 3}, ckpt)
    code, out, err = run_cli("import-checkpoint", "iagnet", ckpt, "--out", tmp_path / "m",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["tensors"] == len(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = models.from_pretrained(tmp_path / "m")
    sd = model.state_dict()
    torch.testing.assert_close(sd["point_encoder.sa2.scales.1.linears.2.weight"],
                               state["point_encoder.sa2.conv_blocks.1.2.weight"][:, :, 0, 0])
    torch.testing.assert_close(sd["fp1.mlp.norms.1.running_var"],
                               state["decoder.fp1.mlp_bns.1.running_var"])
    torch.testing.assert_close(sd["out_head.fc2.weight"], state["decoder.out_head.5.weight"])
    torch.testing.assert_close(sd["arm.proj_sk.bias"], state["ARM.cross_atten.proj_sk.bias"])
    # refuses to overwrite
    code, _, err = run_cli("import-checkpoint", "iagnet", ckpt, "--out", tmp_path / "m")
    assert code == 2 and "--force" in err


def test_import_checkpoint_errors(tmp_path, run_cli):
    state = _fake_official()
    del state["JRA.i_atten.query.weight"]
    state["decoder.extra.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    code, _, err = run_cli("import-checkpoint", "iagnet", bad, "--out", tmp_path / "o")
    assert code == 2
    assert "decoder.extra.weight" in err and "jra.i_atten.query.weight" in err
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli("import-checkpoint", "iagnet", tmp_path / "nope.pt", "--out",
                           tmp_path / "o")
    assert code == 2 and "not found" in err
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    code, _, err = run_cli("import-checkpoint", "iagnet", evil, "--out", tmp_path / "o")
    assert code == 2 and "not a loadable checkpoint" in err
    code, _, err = run_cli("import-checkpoint", "nosuch", bad, "--out", tmp_path / "o")
    assert code == 2
    code, _, err = run_cli("import-checkpoint", "iagnet", bad, "--out", tmp_path / "o",
                           "--set", "novalue")
    assert code == 2 and "--set" in err and "KEY=VALUE" in err
    code, _, err = run_cli("import-checkpoint", "iagnet", bad, "--out", tmp_path / "o",
                           "--set", "depth=3")
    assert code == 2 and "unknown iagnet config field" in err


def test_lmaffordance3d_reference_keys_all_map():
    from affcli.models import from_reference_state_dict

    doc = json.loads((FIXTURES / "lmaffordance3d_reference_keys.json").read_text())
    g = torch.Generator().manual_seed(3)
    state = {k: (torch.rand(s, generator=g) + 0.5) if k.endswith("running_var") else
             torch.randn(s, generator=g) for k, s in doc["keys"].items()
             if not k.endswith("num_batches_tracked")}
    state.update({k: torch.tensor(1) for k in doc["keys"] if k.endswith("num_batches_tracked")})
    ours_state, dropped = convert_state_dict(state, key_map("lmaffordance3d"))
    assert dropped == ["img_encoder.model.fc.weight", "img_encoder.model.fc.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = models.build("lmaffordance3d")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("language_model.")}
    assert set(ours_state) == set(own)
    assert all(ours_state[k].shape == own[k].shape for k in own)
    # a checkpoint trained with the same language model carries its weights under llm_model.
    full = {**state, **{f"llm_model.{k.removeprefix('language_model.')}": v
                        for k, v in model.state_dict().items() if k.startswith("language_model.")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        imported = from_reference_state_dict("lmaffordance3d", full)
    torch.testing.assert_close(imported.state_dict()["fusion.i_atten.query.weight"],
                               state["fusion.img_attention.query.weight"])
    torch.testing.assert_close(imported.state_dict()["out_head.norm.running_var"],
                               state["head.out_head.1.running_var"])


def test_pointrefer_reference_keys_all_map():
    from affcli.models.official import from_reference_state_dict

    doc = json.loads((FIXTURES / "pointrefer_reference_keys.json").read_text())
    model = models.build("pointrefer")
    own = model.state_dict()
    hidden = model.text_encoder.config.hidden_size  # 384 for the packaged MiniLM
    state = {}
    for k, shape in doc["keys"].items():
        if k == "text_resizer.0.weight":
            assert shape == [512, 768]  # official checkpoints: roberta-base's 768
            shape = [512, hidden]  # ... and the same layer fed by our text model
        state[k] = (torch.rand(shape) + 0.5 if k.endswith("running_var") else
                    torch.tensor(1) if k.endswith("num_batches_tracked") else torch.randn(shape))
    mapped, dropped = convert_state_dict(state, key_map("pointrefer"))
    assert sorted(dropped) == sorted(k for k in doc["keys"] if k.startswith("out_head."))
    non_text = {k for k in own if not k.startswith("text_encoder.")}
    assert set(mapped) == non_text
    assert all(mapped[k].shape == own[k].shape for k in non_text)
    full = {**state, **{k: v for k, v in own.items() if k.startswith("text_encoder.")}}
    imported = from_reference_state_dict("pointrefer", full)
    sd = imported.state_dict()
    torch.testing.assert_close(sd["fusion.group_layer.attn.q_lin.weight"],
                               state["gpb.group_layer.attn.q_lin.weight"])
    torch.testing.assert_close(sd["pos1d"], state["pos1d"])
    torch.testing.assert_close(sd["point_encoder.sa3.scales.1.norms.2.bias"],
                               state["point_encoder.sa3.bn_blocks.1.2.bias"])
