"""A short training on the tiny synthetic sets raises validation aIoU over the untrained
model, for each of the three models (512-point clouds, small batches: about a minute each on
two CPU cores). AUC must rise with it, so a degenerate "everything positive" output, which
scores a fair aIoU on its own, cannot pass. The trained PointRefer then loses aIoU when clutter
is added around the cloud (the add_local corruption)."""

from __future__ import annotations

import json

import pytest

from affcli import models
from affcli.engine.distributed import Process
from affcli.engine.evaluator import predict, score
from affcli.engine.recipes import resolve
from affcli.engine.robustness import CorruptedView
from affcli.engine.trainer import Trainer

# PointRefer first pushes every score down and needs a few epochs to rise where the part is;
# LMAffordance3D's recipe warms up over 2,000 steps, so a short run uses a constant rate.
# Validation in batches of 8; the image models validate on the first 24 of 45 samples (the
# untrained model is scored on the same ones).
CASES = {
    # (batches of one: more updates for the same compute, a third of the time of batch 4)
    "pointrefer": ("laso", {"epochs": 3, "batch_size": 1, "max_batches": 12,
                            "model_config": {"freeze_text_encoder": True}}),
    "iagnet": ("piad", {"epochs": 3, "batch_size": 2, "max_batches": 14, "pairing_num": 1,
                        "max_val_batches": 3}),
    # (at 1e-4 the best validation aIoU comes only at epoch 6; at 1e-3 it is 0.19 against
    # the untrained 0.156 by epoch 3)
    "lmaffordance3d": ("agpil", {"epochs": 3, "batch_size": 2, "max_batches": 20,
                                 "pairing_num": 1, "scheduler": "constant", "lr": 1e-3,
                                 "max_val_batches": 3}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_short_training_raises_validation_aiou(name, prepared, tmp_path):
    kind, extra = CASES[name]
    # (test_split "": no test evaluation at the end, which nothing here looks at)
    given = {"data": str(prepared(kind)), "num_points": 512, "workers": 0,
             "test_split": "", "eval_batch_size": 8, "out": str(tmp_path / name), **extra}
    cfg = resolve(name, models.model_class(name).train_recipe, None, given)
    trainer = Trainer(cfg, Process())
    untrained = score(predict(trainer.model, trainer.val_set, 8, trainer.proc,
                              limit=8 * cfg.max_val_batches))["overall"]
    trainer.run()
    records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().split("\n")
               if x]
    best = max(records, key=lambda r: r["val"]["aiou"])
    assert best["val"]["aiou"] > untrained["aiou"] + 0.01, (untrained, records)
    assert best["val"]["auc"] > untrained["auc"] + 0.03, (untrained, records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    if name == "pointrefer":  # (one trained model is enough; its validation set is smallest)
        _added_clutter_lowers_aiou(trainer)


def _added_clutter_lowers_aiou(trainer: Trainer) -> None:
    """The trained model with add_local:5, clusters of points added around
    the cloud (negatives in the ground truth): the model scores some of them as the part, so
    validation aIoU falls below the clean figure. (Measured: 0.143 against 0.192 at one
    thread, 0.122 against 0.178 at two. This briefly trained model does not react as
    consistently to the drop corruptions: drop_global:5 raised its aIoU at one thread.)"""
    def aiou(dataset) -> float:
        return score(predict(trainer.model, dataset, 8, trainer.proc))["overall"]["aiou"]

    clean = aiou(trainer.val_set)
    cluttered = aiou(CorruptedView(trainer.val_set, "add_local", 5))
    assert cluttered < clean - 0.02, (clean, cluttered)
