"""What `affcli doctor --gpu` checks, at which sizes and to which tolerances.

Two plans run the same code: `gpu_plan()` at the sizes that reach every kernel branch and the
papers' batch sizes (about five minutes on one H200, well inside the eight the run is allowed),
and `dry_plan()` on the CPU at the smallest sizes that still take every branch (the kernels run
in Triton's interpreter, which is some thousand times slower), so the test suite can run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Everything --only can select; the environment row is always there.
GROUPS = ("kernels", "encoder", "bench", "train", "torchrun", "inference")

# The encoder of the test suite's `bench ops` test: the full encoder's structure (three MSG
# levels, several layers per scale) at a tenth of its width and centres.
SMALL_ENCODER = {
    "sa1_centers": 64, "sa1_neighbors": (8, 16, 16), "sa1_mlps": ((8, 8), (8, 16), (8, 16)),
    "sa2_centers": 32, "sa2_neighbors": (8, 16), "sa2_mlps": ((16, 16), (16, 24)),
    "sa3_centers": 16, "sa3_neighbors": (8, 8), "sa3_mlps": ((16, 16), (16, 24)),
}

TOLERANCES = {
    "kernel": 1e-5,  # float outputs of the kernels (relative to the largest magnitude)
    "encoder": 1e-4,  # encoder outputs, gradients and running statistics (same measure)
    "heatmap": 1e-4,  # predict / eval heatmaps (absolute; they lie in [0, 1])
    "metric": 1e-5,  # eval's aIoU, AUC, SIM, MAE (absolute)
}


@dataclass(frozen=True)
class FpsCase:
    label: str
    batch: int
    points: int
    samples: int
    grid: bool = False  # points on a 3-level integer grid: exact distance ties everywhere


@dataclass(frozen=True)
class BallCase:
    label: str
    batch: int
    points: int
    centers: int
    k: int
    radius: float
    # "spread": centres also beyond the cloud, so some balls are empty, some partly and some
    # over-full; "grid": integer grid points and radius 1, so many points lie exactly on it
    layout: str = "spread"


@dataclass(frozen=True)
class NnCase:
    label: str
    batch: int
    unknown: int
    known: int
    grid: bool = False


@dataclass(frozen=True)
class Plan:
    mode: str  # "gpu" or "dry-run"
    device: str  # where the device side of every comparison runs
    # The ops backend of the device side of predict and eval: None is the natural dispatch
    # (Triton on CUDA). The dry run compares the portable torch ops with the CPU path there:
    # interpreted kernels would take minutes per model forward.
    inference_backend: str | None
    tolerance_scale: float = 1.0

    fps: tuple[FpsCase, ...] = ()
    # (register block, tile) in place of the kernel's own: the dry run reaches the tiled
    # branch with a few hundred points instead of more than 8,192
    fps_limits: tuple[int, int] | None = None
    ball: tuple[BallCase, ...] = ()
    nn: tuple[NnCase, ...] = ()
    gather: tuple[int, int, int, int, int] = (2, 8, 30, 20, 16)  # B, C, N, M, k
    interpolate: tuple[int, int, int, int] = (2, 8, 20, 150)  # B, C, m known, n unknown

    encoder_batch: int = 2
    encoder_points: int = 256
    encoder_config: dict | None = None  # EncoderConfig fields; None: the models' encoder

    bench_batches: tuple[int, ...] = (2,)
    bench_points: int = 256
    bench_repeats: int = 1
    bench_warmup: bool = True  # one untimed call first (compilation, autotuning, caches)

    # How many of the registry's trainable models the train, torchrun, eval and predict rows
    # take, in registry order (None: all). The dry run takes one: its rows run the same code
    # for every model, and each model's own paths are tested by the suite (tests/engine/).
    models: int | None = None
    synth_classes: tuple[str, ...] | None = None  # None: every synthetic class
    shapes_per_class: int = 2

    train_batch: int | None = None  # None: each model's paper batch size
    train_points: int | None = None  # None: the data's 2,048 points
    train_steps: int = 8  # on one fixed batch, so a falling loss is expected
    train_warmup: int = 2  # steps left out of the timing (compilation, autotuning)
    train_pairing: int | None = None  # clouds per image (PIAD, AGPIL); None: the recipe's

    torchrun_max_batches: int = 0  # 0: the whole epoch
    # CPU threads of the torchrun child (None: torchrun's share of the cores); the dry run
    # gives it one, since the rows beside it need the other core
    torchrun_threads: int | None = None
    torchrun_timeout_s: float = 300.0
    # Collect the torchrun child only after the timed rows too (bench, train, inference): only
    # where timings mean nothing (the dry run), so that the two processes overlap entirely
    torchrun_last: bool = False

    eval_samples: int = 0  # 0: the whole test split
    eval_votes: int | None = None  # None: the model's recipe (PointRefer: 3)
    predict_shapes: int = 2
    infer_batch: int = 8

    tolerances: dict[str, float] = field(default_factory=lambda: dict(TOLERANCES))

    @property
    def dry(self) -> bool:
        return self.mode == "dry-run"

    def tol(self, name: str) -> float:
        return self.tolerances[name] * self.tolerance_scale

    def summary(self) -> dict:
        """The plan's figures for the report (what the rows were measured at)."""
        return {"mode": self.mode, "device": self.device,
                "inference_backend": self.inference_backend,
                "tolerances": {k: self.tol(k) for k in self.tolerances},
                "tolerance_scale": self.tolerance_scale, "models": self.models or "all",
                "bench_batches": self.bench_batches,
                "bench_points": self.bench_points, "train_steps": self.train_steps,
                "train_batch": self.train_batch or "paper", "train_points": self.train_points}

    def scaled(self, tolerance_scale: float) -> Plan:
        return replace(self, tolerance_scale=tolerance_scale)


def gpu_plan(device: str = "cuda") -> Plan:
    return Plan(
        mode="gpu", device=device, inference_backend=None,
        fps=(FpsCase("registers", 8, 2048, 512),
             FpsCase("tiled", 2, 16384, 1024),  # > 8,192 points: the scratch-buffer branch
             FpsCase("ties", 4, 4096, 256, grid=True),
             FpsCase("ties, tiled", 2, 16384, 128, grid=True)),
        ball=(BallCase("spread", 4, 2048, 512, 64, 0.2),
              BallCase("k over one tile", 2, 2048, 128, 160, 0.4),  # k > 64: two K tiles
              BallCase("boundary ties", 2, 4096, 256, 16, 1.0, layout="grid")),
        nn=(NnCase("random", 4, 2048, 512), NnCase("ties", 2, 1024, 300, grid=True)),
        gather=(4, 64, 256, 512, 64),  # 32,768 picks of 256 points: ~128 on each point
        interpolate=(4, 128, 128, 2048),  # 3 x 2,048 picks of 128 known points
        encoder_batch=8, encoder_points=2048,
        bench_batches=(16, 64), bench_points=2048, bench_repeats=10,
        train_steps=8, train_warmup=2,
        torchrun_timeout_s=300.0,
        eval_samples=16, predict_shapes=2, infer_batch=8,
    )


def dry_plan() -> Plan:
    return Plan(
        mode="dry-run", device="cpu", inference_backend="torch",
        fps=(FpsCase("registers", 2, 100, 24),
             FpsCase("tiled", 2, 150, 8),  # three tiles of 64
             FpsCase("ties", 2, 90, 40, grid=True),
             FpsCase("ties, tiled", 1, 150, 30, grid=True)),
        fps_limits=(128, 64),
        ball=(BallCase("spread", 2, 256, 48, 8, 0.25),
              BallCase("k over one tile", 1, 200, 8, 80, 0.6),
              BallCase("boundary ties", 2, 150, 20, 16, 1.0, layout="grid")),
        nn=(NnCase("random", 2, 100, 70), NnCase("ties", 1, 40, 150, grid=True)),
        gather=(2, 8, 30, 20, 16), interpolate=(2, 8, 20, 150),
        encoder_batch=2, encoder_points=128, encoder_config=SMALL_ENCODER,
        bench_batches=(2,), bench_points=128, bench_repeats=1, bench_warmup=False,
        models=1, synth_classes=("Table", "Knife"), shapes_per_class=2,
        # (batch 1 where a model allows it: the encoder's cost is fixed by its 512 centres)
        train_batch=1, train_points=512, train_steps=2, train_warmup=1, train_pairing=1,
        torchrun_max_batches=1, torchrun_threads=1, torchrun_timeout_s=180.0,
        torchrun_last=True,
        eval_samples=1, eval_votes=1, predict_shapes=1, infer_batch=1,
    )
