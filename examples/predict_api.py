"""Predict affordance heatmaps from Python with affcli's engine (what `affcli predict` runs).

    python examples/predict_api.py runs/pointrefer/seen-1 mug.ply bowl.obj
"""

import sys

import numpy as np

from affcli.engine.predictor import Conditioning, OutputWriter, Predictor, unique_stems
from affcli.errors import AffError

run, *shapes = sys.argv[1:] or ["runs/pointrefer/seen-1"]
cond = Conditioning(question="Where would you grasp this object?")
# The keywords are the model's declared input names (`affcli models --json` lists them):
# IAGNet:         Conditioning(image="img.jpg", boxes="img.json")
#             or  Conditioning(image=..., object_box=(10, 20, 200, 300))
# LMAffordance3D: Conditioning(image="img.jpg", instruction="Pick up the mug.")
predictor = Predictor.load(run, cond, device="auto", batch_size=8)
print(f"{predictor.model_type} from {predictor.source}: clouds of {predictor.n_points} points")

# 1) files in, files out (PLY with heatmap colours + score, .npy scores), errors per file
writer = OutputWriter("predictions", render=False, force=True)  # force: reruns replace
for result in predictor.run(shapes, writer, stems=unique_stems(shapes)):
    print(result.summary())  # the dict `affcli predict --json` prints

# 2) a cloud already in memory: one score in [0, 1] per point, in the input's order
points = np.random.default_rng(0).normal(size=(3000, 3))
scores = predictor.predict_points(points)
print(f"{len(scores)} scores, mean {scores.mean():.3f}")

# bad input is an AffError naming the file or option
try:
    predictor.predict_points(np.zeros((2, 3)))
except AffError as exc:
    print("error:", exc.one_line())
