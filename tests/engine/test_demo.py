"""`make demo`'s recipe, read from the Makefile itself, trains a PointRefer that finds the
afforded parts: on the very shape files the demo renders (instances no split holds, in their
own size and place), the points of the part each question asks about rank above the rest
(AUC >= 0.8 against the synthetic labels) and score visibly higher. The same model then loses
validation aIoU when clutter is added around the clouds (add_local).

The recipe trains for about 3.5 minutes on two cores (over 5 on the one core a test worker
has): more than the suite can spend on one test within its CI budget, so that test runs on
request, `make test-demo` (AFFCLI_DEMO_TEST=1), as Hugging Face runs its slow tests with
RUN_SLOW=1. The check that the Makefile still asks the issue's questions runs always."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from affcli.cli import main
from affcli.data.pointio import read_shape
from affcli.data.prepare import prepare
from affcli.data.synth.common import shape_instance
from affcli.data.synth.run import FILE_POINTS, STREAM_FILES, synthesize
from affcli.metrics import per_sample

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
# the affordance each render's question names (its labels are what the scores are held to)
QUESTION_WORDS = {"grasp": "grasp", "sit on": "sit", "put things into": "contain",
                  "cut with": "cut", "move": "move"}

ROOT = MAKEFILE.parent
on_request = pytest.mark.skipif(not os.environ.get("AFFCLI_DEMO_TEST"),
                                reason="trains the demo's recipe (minutes): `make test-demo`")


def _variable(text: str, name: str) -> str:
    found = re.search(rf"^{name}\s*\?=\s*((?:.*\\\n)*.*)$", text, re.M)
    assert found, f"the Makefile has no {name}"
    return found.group(1).replace("\\\n", " ")


def demo_recipe() -> dict:
    """The Makefile's demo variables and the (shape file, question) pairs it renders."""
    text = MAKEFILE.read_text()
    renders = re.findall(r'\$\(DEMO\)/shapes/(\w+?)_0\.ply\s+--question\s+"([^"]+)"',
                         text.replace("\\\n", " "))
    return {"classes": _variable(text, "DEMO_CLASSES").split(","),
            "affordances": _variable(text, "DEMO_AFFORDANCES").split(","),
            "shapes": int(_variable(text, "DEMO_SHAPES")),
            # (paths in the recipe, e.g. its --config file, are relative to the repository)
            "train": [str(ROOT / a) if (ROOT / a).is_file() else a
                      for a in shlex.split(_variable(text, "DEMO_TRAIN"))],
            "renders": renders}


def test_the_demo_asks_about_the_mug_the_knife_and_the_chair():
    """(Every suite: what the test below trains and checks is what `make demo` runs.)"""
    recipe = demo_recipe()
    asked = {(stem, next(a for w, a in QUESTION_WORDS.items() if f" {w} " in q))
             for stem, q in recipe["renders"]}
    assert {("mug", "grasp"), ("knife", "grasp"), ("chair", "sit")} <= asked, asked
    assert {a for _, a in asked} <= set(recipe["affordances"])
    assert any(a.endswith("examples/demo.yaml") for a in recipe["train"]), recipe["train"]


@on_request
@pytest.mark.slow
def test_the_demo_recipe_finds_the_afforded_parts_of_the_rendered_shapes(tmp_path):
    recipe = demo_recipe()
    classes = [c.strip() for c in recipe["classes"]]
    raw = tmp_path / "raw"
    synthesize("laso", raw, seed=0, shapes_per_class=recipe["shapes"], classes=classes,
               affordances=recipe["affordances"])
    data = tmp_path / "demo.h5"
    prepare("laso", raw, "seen", "full", data)
    run = tmp_path / "run"
    assert main(["train", "pointrefer", "--data", str(data), "--out", str(run),
                 *recipe["train"], "--no-plots", "--quiet"]) == 0
    shapes = tmp_path / "shapes"
    synthesize("shapes", shapes, seed=0, shapes_per_class=1, classes=classes)

    from affcli.engine.predictor import Conditioning, Predictor

    names = {c.lower(): c for c in classes}
    for stem, question in recipe["renders"]:
        affordance = next(a for w, a in QUESTION_WORDS.items() if f" {w} " in question)
        points = read_shape(shapes / f"{stem}_0.ply").points
        labels = shape_instance(0, names[stem], 0, STREAM_FILES, FILE_POINTS).labels[affordance]
        predictor = Predictor.load(run, Conditioning(question=question), device="cpu")
        scores = predictor.predict_points(points)
        auc = float(per_sample(scores[None], labels[None])["auc"][0])
        part = labels >= 0.5
        assert auc >= 0.8, (stem, question, auc)
        # visibly: the part's median score above the rest's upper quartile
        assert np.median(scores[part]) > np.quantile(scores[~part], 0.75), (stem, question)

    _added_clutter_lowers_aiou(run, data)


def _added_clutter_lowers_aiou(run: Path, data: Path) -> None:
    """add_local:5 puts clusters of points around the cloud (negatives in the ground truth):
    the model scores some of them as the part, so validation aIoU falls."""
    from affcli.data.datasets import open_dataset
    from affcli.engine.checkpoint import load_model
    from affcli.engine.distributed import Process
    from affcli.engine.evaluator import predict, score
    from affcli.engine.robustness import CorruptedView

    model = load_model(run)[0].eval()
    val = open_dataset(data, "val", num_points=int(model.config.n_points))

    def aiou(dataset) -> float:
        return score(predict(model, dataset, 8, Process()))["overall"]["aiou"]

    clean = aiou(val)
    cluttered = aiou(CorruptedView(val, "add_local", 5))
    assert cluttered < clean - 0.02, (clean, cluttered)
