"""TensorBoard logging of a training run into `RUN/tb/`, when the optional `tensorboard`
package is installed (`pip install 'affcli[track]'`; `make setup` installs it): step losses
and learning rate, the epoch's figures, and the test gallery at the end. Without the package,
or with `--no-tensorboard`, nothing is logged and nothing is said."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TB_DIR = "tb"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """A SummaryWriter on `RUN/tb/`. A resumed run purges what the interrupted one logged
    after the step it resumes from, so a curve never doubles back."""

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir) / TB_DIR
        # steps up to resume_step are in the checkpoint; later ones were lost with the process
        self.writer = SummaryWriter(str(self.dir),
                                    purge_step=resume_step + 1 if resume_step else None)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, global_step)
        self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, record: dict[str, Any], global_step: int) -> None:
        """The epoch's mean loss, speed and validation figures, at the epoch's last step
        (the x axis of every curve is the global step)."""
        self.writer.add_scalar("epoch/train_loss", record["train_loss"], global_step)
        self.writer.add_scalar("epoch/samples_per_s", record["samples_per_s"], global_step)
        for name, value in (record.get("val") or {}).items():
            if name != "count" and value is not None:
                self.writer.add_scalar(f"val/{name}", value, global_step)
        self.writer.flush()  # a watched run shows each epoch when it ends

    def test(self, overall: dict[str, Any], global_step: int) -> None:
        for name, value in overall.items():
            if name != "count" and value is not None:
                self.writer.add_scalar(f"test/{name}", value, global_step)

    def images(self, paths: list[Path], global_step: int, prefix: str = "gallery") -> None:
        """PNG pictures as images tagged `<prefix>/<file stem>`."""
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            self.writer.add_image(f"{prefix}/{path.stem}", rgb, global_step,
                                  dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def open_log(run_dir: Path, enabled: bool, resume_step: int) -> TensorBoardLog | None:
    """A TensorBoardLog, or None when turned off or the package is not installed."""
    if not enabled or not available():
        return None
    return TensorBoardLog(run_dir, resume_step)
