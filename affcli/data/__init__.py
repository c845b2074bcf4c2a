"""Data in: raw-format readers, the HDF5 format, torch Datasets, synthetic stand-ins."""

from __future__ import annotations

from typing import Any

__all__ = ["open_dataset"]


def __getattr__(name: str) -> Any:
    # Lazy, so that readers and `affcli synth` do not pay for importing torch.
    if name == "open_dataset":
        from affcli.data.datasets import open_dataset

        return open_dataset
    raise AttributeError(name)
