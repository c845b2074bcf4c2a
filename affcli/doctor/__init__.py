"""`affcli doctor`: one unattended command that proves the GPU path and leaves a report.

The GPU path (Triton kernels, AMP, NCCL, the CUDA branch of the fused ops) cannot be tested
where the test suite runs; a GPU machine comes rarely and briefly. So every check is here, in
one prepared run (`affcli doctor --gpu --out report.json`), and the test suite runs the very
same code on the CPU (`--dry-run`: kernels interpreted, tiny sizes, gloo for NCCL) so that it
cannot rot before a GPU shows up.

    plan.py         what is checked, at which sizes and tolerances (GPU and dry-run plans)
    report.py       rows (ok / failed / skipped, figures, error), the JSON document
    numerics.py     comparisons, the forced ops backend, seeded inputs
    workspace.py    the tiny synthetic data sets the model checks share
    environment.py  versions, device, memory
    kernels.py      every Triton kernel against the CPU path
    encoder.py      the PointNet++ encoder: Triton vs torch-composite vs CPU
    throughput.py   `affcli bench ops` on the device
    training.py     a few training steps per model, with and without AMP
    torchrun.py     `affcli train` through torchrun (NCCL on a GPU)
    inference.py    predict and eval on the device against the CPU
    checks.py       the order of it all, and what runs beside what

Nothing is imported here: the CLI must set TRITON_INTERPRET before anything imports triton.
"""
