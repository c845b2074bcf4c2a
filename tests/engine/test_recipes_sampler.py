"""Training configs resolve in the documented order; schedules equal torch's schedulers; the
global-batch sampler gives K processes exactly the 1-process batches."""

from __future__ import annotations

import math

import pytest
import torch

from affcli import models
from affcli.engine.distributed import GlobalBatchSampler, Process, ShardSampler
from affcli.engine.recipes import TrainConfig, learning_rate, resolve
from affcli.errors import AffError


@pytest.mark.parametrize("name, expect", [
    ("pointrefer", {"epochs": 50, "batch_size": 16, "lr": 1e-4, "text_lr": 5e-6,
                    "weight_decay": 1e-3, "scheduler": "step", "step_size": 10, "gamma": 0.5,
                    "optimizer": "adam"}),
    ("iagnet", {"epochs": 80, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-3,
                "scheduler": "cosine", "min_lr": 1e-6, "pairing_num": 2, "optimizer": "adam"}),
    ("lmaffordance3d", {"epochs": 20, "batch_size": 6, "lr": 1e-4, "min_lr": 1e-5,
                        "weight_decay": 0.06, "scheduler": "warmup_cosine",
                        "optimizer": "adamw"}),
])
def test_paper_recipes_are_the_defaults(name, expect):
    cfg = resolve(name, models.model_class(name).train_recipe, None, {})
    assert {k: getattr(cfg, k) for k in expect} == expect


def test_yaml_overrides_recipe_and_command_line_overrides_yaml(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("epochs: 3\nbatch-size: 4\nlr: 0.001\nmodel_config:\n  fps_start: null\n")
    cfg = resolve("iagnet", models.model_class("iagnet").train_recipe, f, {"lr": 0.01,
                                                                          "epochs": None})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (3, 4, 0.01, 1e-3)
    assert cfg.model_config == {"fps_start": None}


@pytest.mark.parametrize("text, needle", [
    ("epochz: 3\n", "unknown option(s) epochz"),
    ("epochs: [1\n", "malformed YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("epochs: 0\n", "epochs must be at least 1"),
    ("model: pointrefer\n", "is a config for 'pointrefer'"),
])
def test_bad_yaml_configs_name_the_file(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(AffError) as err:
        resolve("iagnet", {}, f, {})
    assert needle in str(err.value) and str(f) in str(err.value)


def _torch_rates(scheduler_factory, epochs: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    sched = scheduler_factory(opt)
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_step_and_cosine_equal_torch_schedulers():
    cfg = TrainConfig(model="x", epochs=50, lr=1e-4, scheduler="step", step_size=10, gamma=0.5)
    ours = [learning_rate(cfg, e, 0) for e in range(50)]
    ref = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, 10, 0.5), 50)
    assert ours == pytest.approx(ref, rel=1e-12)
    cfg = TrainConfig(model="x", epochs=80, lr=1e-4, scheduler="cosine", min_lr=1e-6)
    ours = [learning_rate(cfg, e, 0) for e in range(80)]
    ref = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 80, 1e-6), 80)
    assert ours == pytest.approx(ref, rel=1e-9)


def test_warmup_cosine_is_the_lavis_schedule():
    cfg = TrainConfig(model="x", epochs=20, lr=1e-4, min_lr=1e-5, warmup_lr=1e-6,
                      warmup_steps=2000, scheduler="warmup_cosine")
    assert learning_rate(cfg, 0, 0) == pytest.approx(1e-6)
    assert learning_rate(cfg, 0, 1000) == pytest.approx(1e-6 + (1e-4 - 1e-6) / 2)
    assert learning_rate(cfg, 0, 5000) == pytest.approx(1e-4)  # capped at lr
    for e in (1, 10, 19):
        want = (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * e / 20)) + 1e-5
        assert learning_rate(cfg, e, 7) == pytest.approx(want)


@pytest.mark.parametrize("world", [2, 4])
def test_global_batches_split_over_processes(world):
    n, batch = 37, 8
    one = GlobalBatchSampler(n, batch, Process(), shuffle=True, seed=3, drop_last=True)
    parts = [GlobalBatchSampler(n, batch, Process(rank=r, world=world), shuffle=True, seed=3,
                                drop_last=True) for r in range(world)]
    for epoch in (0, 1):
        for s in (one, *parts):
            s.set_epoch(epoch)
        singles = list(one)
        per_rank = [list(p) for p in parts]
        assert len(singles) == 4 and all(len(b) == batch for b in singles)
        for i, b in enumerate(singles):
            assert sum((r[i] for r in per_rank), []) == b  # rank-ordered halves of batch i
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # a new order each epoch
    one.set_epoch(0, start=2)
    assert list(one) == first[2:] and len(one) == 2  # resuming mid-epoch skips done batches


def test_uneven_global_batch_is_refused():
    with pytest.raises(AffError, match="does not split evenly"):
        GlobalBatchSampler(10, 5, Process(rank=0, world=2), True, 0, True)


def test_shards_cover_every_sample_once():
    got = sorted(i for r in range(3) for b in ShardSampler(10, 4, Process(rank=r, world=3))
                 for i in b)
    assert got == list(range(10))
