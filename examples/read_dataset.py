"""Read a prepared file with affcli's Datasets and a torch DataLoader.

    affcli synth laso data/LASO_dataset -k 4 && affcli prepare laso --root data/LASO_dataset
    python examples/read_dataset.py data/laso_seen.h5
"""

import sys

from torch.utils.data import DataLoader

from affcli.data import open_dataset
from affcli.data.h5 import read_info

path = sys.argv[1] if len(sys.argv) > 1 else "data/laso_seen.h5"
info = read_info(path)
print(f"{info.dataset} {info.setting}: splits {info.splits}, {len(info.object_names)} classes")

train = open_dataset(path, "train", seed=0)
loader = DataLoader(train, batch_size=8, shuffle=True, num_workers=2)
for epoch in range(2):
    train.set_epoch(epoch)  # new random draws (questions, pairings, crops) each epoch
    batch = next(iter(loader))
    print(epoch, {k: tuple(v.shape) if hasattr(v, "shape") else len(v) for k, v in batch.items()})
    if "question" in batch:
        print("  e.g.", batch["question"][0], "->",
              info.affordance_names[int(batch["affordance"][0])])
