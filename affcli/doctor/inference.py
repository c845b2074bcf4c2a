"""predict and eval on the device against the same on the CPU, for every registered model.

One seeded model per name (the same weights on both sides): eval's engine (`evaluator.predict`
with the model's recipe votes, then `score`) over the test split of the model's synthetic set,
and predict's engine (`Predictor.run` on loose shape files, with the conditioning any model's
declared inputs get in `affcli bench predict`). Heatmaps must agree to the plan's heatmap
tolerance, eval's overall metrics to its metric tolerance.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch

from affcli.doctor.numerics import ops_backend
from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row
from affcli.doctor.workspace import Workspace

METRICS = ("aiou", "auc", "sim", "mae")


class Models:
    """Each model built once (seeded, on the CPU) and shared by its predict and eval rows."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._built: dict[str, torch.nn.Module] = {}

    def get(self, name: str) -> torch.nn.Module:
        if name not in self._built:
            from affcli import models

            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # ResNet18 from random weights
                self._built[name] = models.build(name, n_points=self.plan.train_points or 2048)
        return self._built[name]

    def drop(self, name: str) -> None:
        self._built.pop(name, None)


def check_eval(plan: Plan, ws: Workspace, built: Models, name: str, row: Row) -> None:
    from affcli import models
    from affcli.data.datasets import open_dataset
    from affcli.engine.distributed import Process
    from affcli.engine.evaluator import predict, score

    cls = models.model_class(name)
    model = built.get(name)
    dataset = open_dataset(ws.data(cls.dataset_kinds[0]), "test",
                           num_points=int(model.config.n_points))
    votes = plan.eval_votes or int(cls.train_recipe.get("votes", 1))
    dev = torch.device(plan.device)

    def run(device: torch.device, backend: str | None) -> object:
        with ops_backend(backend):
            return predict(copy.deepcopy(model).to(device), dataset, plan.infer_batch,
                           Process(device=device), votes=votes, limit=plan.eval_samples)

    on_cpu = run(torch.device("cpu"), "cpu")
    on_dev = run(dev, plan.inference_backend)
    heat = float(np.abs(on_dev.heatmap - on_cpu.heatmap).max())
    row.figures.update(samples=len(on_dev), votes=votes, max_abs_heatmap=heat)
    if not heat <= plan.tol("heatmap"):
        raise CheckFailed(f"heatmaps differ by {heat:.3g} > {plan.tol('heatmap'):.3g}")
    a, b = score(on_dev)["overall"], score(on_cpu)["overall"]
    worst, where = 0.0, METRICS[0]
    for m in METRICS:
        x, y = float(a[m]), float(b[m])
        if math.isnan(x) and math.isnan(y):  # (no positive point in any sample: no aIoU)
            continue
        d = math.inf if math.isnan(x) or math.isnan(y) else abs(x - y)
        if d > worst:
            worst, where = d, m
    row.figures.update(max_abs_metric=worst, aiou=float(a["aiou"]))
    if not worst <= plan.tol("metric"):
        raise CheckFailed(f"{where} differs by {worst:.3g} > {plan.tol('metric'):.3g} "
                          f"({a[where]} on {dev}, {b[where]} on the CPU)")


def check_predict(plan: Plan, ws: Workspace, built: Models, name: str, row: Row) -> None:
    from affcli.bench.startup import conditioning_args, conditioning_values
    from affcli.engine.predictor import Conditioning, Predictor

    model = built.get(name)
    folder = ws.root / f"predict-{name}"
    folder.mkdir(exist_ok=True)
    cond = Conditioning(**conditioning_values(conditioning_args(name, folder)))
    shapes = ws.shapes()[:plan.predict_shapes]
    dev = torch.device(plan.device)

    def run(device: torch.device, backend: str | None) -> list[np.ndarray]:
        with ops_backend(backend):
            pred = Predictor(copy.deepcopy(model), cond, device, plan.infer_batch)
            results = list(pred.run(shapes))
        for res in results:
            if res.error is not None:
                raise res.error
        return [np.asarray(res.scores) for res in results]

    on_cpu = run(torch.device("cpu"), "cpu")
    on_dev = run(dev, plan.inference_backend)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(on_dev, on_cpu, strict=True))
    row.figures.update(shapes=len(shapes), points=sum(len(s) for s in on_dev),
                       max_abs_scores=worst)
    if not worst <= plan.tol("heatmap"):
        raise CheckFailed(f"scores differ by {worst:.3g} > {plan.tol('heatmap'):.3g}")
