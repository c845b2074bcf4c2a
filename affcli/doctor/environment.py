"""The environment row: what this machine runs the checks with.

On a GPU run it fails when there is no usable device (the other rows are then skipped: they
would only repeat the reason) or when TRITON_INTERPRET is set, which would interpret the
kernels on the host instead of compiling them for the device.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import torch

from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row


def _driver() -> str | None:
    """The NVIDIA driver version, from nvidia-smi (torch does not expose it)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def check_environment(plan: Plan, row: Row, kernels: bool = True) -> None:
    """`kernels`: whether the run goes on to the kernels (on the CPU they need the
    interpreter)."""
    import numba
    import triton

    from affcli.ops import triton as tri

    f = row.figures
    f.update(python=platform.python_version(), torch=torch.__version__,
             cuda=torch.version.cuda, triton=triton.__version__, numba=numba.__version__,
             cpu_threads=torch.get_num_threads(), cores=os.cpu_count(),
             triton_interpreted=tri.interpreted())
    dev = torch.device(plan.device)
    if dev.type != "cuda":
        f["device"] = f"cpu ({platform.processor() or platform.machine()})"
        if kernels and not tri.interpreted():
            raise CheckFailed("the Triton kernels cannot run on the CPU: TRITON_INTERPRET=1 was "
                              "not set before triton was imported")
        return
    if not torch.cuda.is_available():
        raise CheckFailed("no CUDA device is visible (torch.cuda.is_available() is False; "
                          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    f.update(driver=_driver(), device=props.name, capability=f"{props.major}.{props.minor}",
             devices=torch.cuda.device_count(), memory_gib=round(total / 2**30, 1),
             free_gib=round(free / 2**30, 1), multiprocessors=props.multi_processor_count,
             bf16=torch.cuda.is_bf16_supported(),
             # TF32 changes float32 results on the GPU (matmuls, convolutions): the CPU
             # comparisons below depend on these
             tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
             tf32_cudnn=torch.backends.cudnn.allow_tf32,
             nccl=torch.distributed.is_nccl_available(),
             executable=sys.executable)
    if tri.interpreted():
        raise CheckFailed("TRITON_INTERPRET is set: the kernels would be interpreted on the "
                          "host, not compiled for the GPU (unset it and rerun)")
