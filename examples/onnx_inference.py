"""Run a model exported by `affcli export --format onnx` with onnxruntime alone (no PyTorch
model, no checkpoint): the .onnx file carries the model's config in its metadata, so the
question or instruction is tokenised exactly as in training.

    affcli export runs/pointrefer/seen-1 --format onnx          # -> .../best.onnx
    python examples/onnx_inference.py runs/pointrefer/seen-1/best.onnx mug.ply \
        --question "Where would you grasp this mug?"
    python examples/onnx_inference.py iagnet.onnx chair.ply --image sit.jpg --boxes sit.json
    python examples/onnx_inference.py lma.onnx bag.txt --image lift.jpg --instruction "Lift it."

Prints one JSON line per shape and writes <shape>.scores.npy (one score per original point).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from affcli import models
from affcli.engine import exporter
from affcli.engine.predictor import interpolate_scores, prepare_shape
from affcli.models.inputs import conditioning_item, parse_box

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("onnx", type=Path)
parser.add_argument("shapes", nargs="+", type=Path)
parser.add_argument("--question")
parser.add_argument("--instruction")
parser.add_argument("--image", type=Path)
parser.add_argument("--boxes", type=Path)
parser.add_argument("--object-box")
args = parser.parse_args()

config = exporter.read_config(args.onnx)  # model type, points per cloud, text model
model_cls = models.model_class(config.model_type)  # its declared inputs (no weights loaded)
session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
given = {"question": args.question, "instruction": args.instruction, "image": args.image,
         "boxes": args.boxes,
         "object_box": parse_box(args.object_box) if args.object_box else None}
values = {k: v for k, v in given.items() if v is not None}
model_cls.check_inputs(values)  # the inputs this model needs, named if missing
# texts as given; the image [3, 224, 224] normalised, its boxes in the resized image's pixels
item = conditioning_item(model_cls.inputs, values)
text_input = model_cls.text_input()

for path in args.shapes:
    # resampled to the model's cloud size and normalised as in training
    shape = prepare_shape(path, config.n_points)
    feed = exporter.graph_inputs(
        args.onnx, shape.sample, text=item[text_input.name] if text_input else None,
        image=item.get("image"), subject_box=item.get("subject_box"),
        object_box=item.get("object_box"))
    heatmap = session.run(["heatmap"], exporter.as_numpy(feed))[0][0]  # [n_points]
    # back onto every point of the file (3-NN inverse-distance interpolation)
    scores = interpolate_scores(shape.sample, heatmap, shape.normalized)
    np.save(path.with_suffix(".scores.npy"), scores)
    print(json.dumps({"path": str(path), "points": len(scores), "mean": float(scores.mean()),
                      "fraction_above_0.5": float((scores > 0.5).mean())}))
