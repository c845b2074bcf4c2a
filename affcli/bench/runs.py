"""Benchmarks behind `affcli bench`. Each returns plain rows the CLI renders."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from affcli.data.datasets import open_dataset
from affcli.data.prepare import prepare
from affcli.data.synth.run import synthesize
from affcli.errors import AffError


def _rate(dataset: Any, budget_s: float, batch_size: int = 16, min_batches: int = 2
          ) -> tuple[float, int]:
    """Samples per second through a DataLoader (shuffled batches, collated, main process),
    the way training reads, for about `budget_s` seconds."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    next(iter(loader))  # warm up: lazy opens, caches, imports
    count = batches = 0
    t0 = time.perf_counter()
    while batches < min_batches or time.perf_counter() - t0 < budget_s:
        for batch in loader:
            count += len(batch["index"] if isinstance(batch, dict) else batch[0])
            batches += 1
            if batches >= min_batches and time.perf_counter() - t0 >= budget_s:
                break
    return count / (time.perf_counter() - t0), count


def bench_loader(
    datasets: Sequence[str] = ("laso", "piad", "agpil"),
    shapes_per_class: int = 4,
    seconds: float = 3.0,
    splits: Sequence[str] = ("train", "test"),
    workdir: Path | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Samples/s of the reference-style raw loaders vs our HDF5 datasets on a synth set,
    both read through a DataLoader with batch size 16 in one process."""
    from affcli.bench.baselines import RawLaso, RawListed

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for ds in datasets:
            root = Path(tmp) / ds
            synthesize(ds, root, seed=seed, shapes_per_class=shapes_per_class)
            h5 = Path(tmp) / f"{ds}.h5"
            t0 = time.perf_counter()
            prepare(ds, root, "seen", "full", h5)
            prep_s = time.perf_counter() - t0
            for split in splits:
                ours = open_dataset(h5, split)
                raw = (RawLaso(root, "seen", split) if ds == "laso"
                       else RawListed(root, "seen", split, view="full" if ds == "agpil" else None))
                raw_rate, raw_n = _rate(raw, seconds)
                h5_rate, h5_n = _rate(ours, seconds)
                rows.append({
                    "dataset": ds, "split": split, "part": "whole sample", "samples": len(ours),
                    "raw_samples_per_s": raw_rate, "h5_samples_per_s": h5_rate,
                    "speedup": h5_rate / raw_rate, "raw_reads": raw_n, "h5_reads": h5_n,
                    "prepare_s": prep_s,
                })
                if ds != "laso" and split == "train":
                    rows.append(_clouds_only(ds, raw, ours, seconds, prep_s))
    return rows


def _clouds_only(ds: str, raw: Any, ours: Any, seconds: float, prep_s: float) -> dict[str, Any]:
    """The point-cloud half of a PIAD/AGPIL train sample (pairing_num clouds with their
    masks), without the image that both paths decode the same way."""
    rng = np.random.default_rng(0)
    n_shapes = len(ours.shape_object)

    def raw_get(i: int) -> None:
        for _ in range(ours.pairing_num):
            raw.parse_points(raw.points[int(rng.integers(len(raw.points)))])

    def h5_get(i: int) -> None:
        for _ in range(ours.pairing_num):
            ours.cloud(int(rng.integers(n_shapes)), 0, None)

    raw_rate = _loop_rate(raw_get, seconds)
    h5_rate = _loop_rate(h5_get, seconds)
    return {"dataset": ds, "split": "train", "part": "clouds only", "samples": len(ours),
            "raw_samples_per_s": raw_rate, "h5_samples_per_s": h5_rate,
            "speedup": h5_rate / raw_rate, "prepare_s": prep_s}


def _loop_rate(get: Any, budget_s: float, min_items: int = 3) -> float:
    get(0)
    count, t0 = 0, time.perf_counter()
    while count < min_items or time.perf_counter() - t0 < budget_s:
        get(count)
        count += 1
    return count / (time.perf_counter() - t0)


def geometric_mean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def _median_ms(fn: Any, repeats: int, sync: Any = None) -> float:
    fn()  # warm up (JIT compilation, caches, allocator)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def realistic_clouds(batch_size: int, num_points: int, seed: int = 0) -> Any:
    """Object surfaces (the synthetic classes in turn), centred and scaled to the unit sphere
    like the models' inputs: neighbourhood sizes, and so the work, are those of real data."""
    import torch

    from affcli.data.datasets import normalize_points
    from affcli.data.synth.shapes import SYNTH_CLASSES, make_shape

    clouds = []
    for i in range(batch_size):
        shape = make_shape(SYNTH_CLASSES[i % len(SYNTH_CLASSES)],
                           np.random.default_rng([seed, i]), n_points=num_points)
        clouds.append(normalize_points(shape.points))
    return torch.from_numpy(np.stack(clouds))


class _Timing(NamedTuple):
    """One figure of `bench_ops`: ours per device ("cpu", "triton"), the reference's (ms)."""

    ours: dict[str, float]
    reference: float
    extra: dict[str, Any] | None = None  # more columns (FPS: fpsample's figures)

    def row(self, op: str) -> dict[str, Any]:
        return {"op": op, "reference_ms": self.reference,
                **{f"{k}_ms": v for k, v in self.ours.items()},
                "speedup": self.reference / self.ours["cpu"], **(self.extra or {})}


def _sync(device: str) -> Any:
    import torch

    return torch.cuda.synchronize if device == "triton" else None


def bench_ops(batch_size: int = 16, num_points: int = 2048, repeats: int = 3,
              encoder: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Milliseconds per call of the engine's ops and encoder: ours (CPU path; Triton too on
    CUDA) against the reference utility's algorithms, and FPS against `fpsample`."""
    import torch

    from affcli.nn.pointnet2 import EncoderConfig

    if batch_size < 1 or repeats < 1:
        raise AffError("--batch-size/--repeats", "must be at least 1")
    if num_points < 512:
        raise AffError("--points", "must be at least 512 (the first level samples 512 centres)")
    xyz = realistic_clouds(batch_size, num_points, seed)
    cfg = EncoderConfig()
    devices = [("cpu", xyz)]
    if torch.cuda.is_available():
        devices.append(("triton", xyz.cuda()))
    fps, centers = _bench_fps(devices, cfg.sa1_centers, repeats)
    ball = _bench_ball_query(devices, centers, cfg, repeats)
    gathers = _bench_gathers(devices, centers["cpu"], cfg, repeats)
    parts = (fps, ball, gathers)
    sampling = _Timing({k: sum(t.ours[k] for t in parts) for k in ball.ours},
                       sum(t.reference for t in parts))
    rows = [fps.row(f"FPS {num_points}->{cfg.sa1_centers}"), ball.row("ball query x3 (sa1)"),
            gathers.row("gathers x3 (sa1)"), sampling.row("sampling + grouping"),
            _bench_interpolation(devices, centers, cfg.sa1_centers, repeats, seed
                                 ).row("3-NN + interpolation")]
    if encoder:
        rows.extend(_bench_encoder(xyz, repeats, devices))
    return rows


def _bench_fps(devices: list, n_centers: int, repeats: int) -> tuple[_Timing, dict[str, Any]]:
    """FPS to the first level's centres, and those centres per device (the next ops' input)."""
    from affcli import ops
    from affcli.bench import baseline_ops as ref
    from affcli.nn.pointnet2 import gather_rows

    ours, centers = {}, {}
    for name, x in devices:
        ours[name] = _median_ms(lambda x=x: ops.farthest_point_sample(x, n_centers),
                                repeats, _sync(name))
        centers[name] = gather_rows(x, ops.farthest_point_sample(x, n_centers))
    xyz = devices[0][1]
    reference = _median_ms(lambda: ref.farthest_point_sample(xyz, n_centers), repeats)
    extra: dict[str, Any] = {}
    try:
        import fpsample

        pcs = xyz.numpy()
        extra["fpsample_ms"] = _median_ms(lambda: [fpsample.bucket_fps_kdline_sampling(
            p, n_centers, h=7, start_idx=0) for p in pcs], repeats)
        extra["fpsample_ratio"] = ours["cpu"] / extra["fpsample_ms"]
    except ImportError:
        extra["fpsample_ms"] = None
    return _Timing(ours, reference, extra), centers


def _bench_ball_query(devices: list, centers: dict[str, Any], cfg: Any, repeats: int
                      ) -> _Timing:
    """Ball query at the three scales of the first level."""
    from affcli import ops
    from affcli.bench import baseline_ops as ref

    scales = list(zip(cfg.sa1_radii, cfg.sa1_neighbors, strict=True))
    ours = {}
    for name, x in devices:
        c = centers[name]
        ours[name] = _median_ms(lambda x=x, c=c: [ops.ball_query(x, c, r, k) for r, k in scales],
                                repeats, _sync(name))
    xyz, c = devices[0][1], centers["cpu"]
    reference = _median_ms(lambda: [ref.ball_query(xyz, c, r, k) for r, k in scales], repeats)
    return _Timing(ours, reference)


def _bench_gathers(devices: list, c: Any, cfg: Any, repeats: int) -> _Timing:
    """Each scale's grouped [features; xyz] (the reference gathers the two and concatenates;
    channels-first, one gather of the concatenation does both)."""
    import torch

    from affcli import ops
    from affcli.bench import baseline_ops as ref

    xyz = devices[0][1]
    feats = xyz.clone()  # the first level's features are the coordinates, as in the models
    idxs = [ops.ball_query(xyz, c, r, k) for r, k in zip(cfg.sa1_radii, cfg.sa1_neighbors,
                                                           strict=True)]
    both = torch.cat([feats, xyz], dim=-1).transpose(1, 2).contiguous()  # [B, 6, N]
    ours = {"cpu": _median_ms(lambda: [ops.gather_group(both, i) for i in idxs], repeats)}
    if len(devices) > 1:
        bg, ig = both.cuda(), [i.cuda() for i in idxs]
        ours["triton"] = _median_ms(lambda: [ops.gather_group(bg, i) for i in ig], repeats,
                                    torch.cuda.synchronize)
    reference = _median_ms(lambda: [torch.cat([ref.index_points(feats, i),
                                               ref.index_points(xyz, i)], -1)
                                    for i in idxs], repeats)
    return _Timing(ours, reference)


def _bench_interpolation(devices: list, centers: dict[str, Any], n_centers: int, repeats: int,
                         seed: int) -> _Timing:
    """3-NN + interpolation of 128 channels from the centres back to every point."""
    import torch

    from affcli import ops
    from affcli.bench import baseline_ops as ref

    xyz, c = devices[0][1], centers["cpu"]
    gen = torch.Generator().manual_seed(seed)
    coarse_f = torch.randn(xyz.shape[0], 128, n_centers, generator=gen)

    def ours_interp(x: Any, c: Any, f: Any) -> Any:
        d, i = ops.three_nn(x, c)
        w = 1.0 / (d + 1e-8)
        return ops.three_interpolate(f, i, w / w.sum(-1, keepdim=True))

    def ref_interp() -> Any:
        d, i = ref.square_distance(xyz, c).sort(dim=-1)
        d, i = d[:, :, :3], i[:, :, :3]
        w = 1.0 / (d + 1e-8)
        w = w / w.sum(-1, keepdim=True)
        return (ref.index_points(coarse_f.transpose(1, 2), i) * w.unsqueeze(-1)).sum(2)

    ours = {"cpu": _median_ms(lambda: ours_interp(xyz, c, coarse_f), repeats)}
    if len(devices) > 1:
        ours["triton"] = _median_ms(lambda: ours_interp(xyz.cuda(), centers["triton"],
                                                        coarse_f.cuda()), repeats,
                                    torch.cuda.synchronize)
    return _Timing(ours, _median_ms(ref_interp, repeats))


def _bench_encoder(xyz: Any, repeats: int, devices: list) -> list[dict[str, Any]]:
    import torch

    from affcli.bench import baseline_ops as ref
    from affcli.nn.pointnet2 import PointNet2Encoder

    torch.manual_seed(0)
    enc = PointNet2Encoder()
    rows = []

    def fwd_bwd(run: Any) -> Any:
        def go() -> None:
            levels = run()
            sum(f.sum() for _, f in levels[1:]).backward()
        return go

    cases = [
        ("encoder forward (eval)", "eval", False),
        ("encoder forward (train)", "train", False),
        ("encoder forward+backward", "train", True),
    ]
    for label, mode, backward in cases:
        getattr(enc, mode)()
        ours: dict[str, float] = {}
        for name, x in devices:
            model = enc if name == "cpu" else enc.cuda()
            sync = torch.cuda.synchronize if name == "triton" else None

            def run(model: Any = model, x: Any = x) -> Any:
                return model(x)

            if backward:
                ours[name] = _median_ms(fwd_bwd(run), repeats, sync)
            else:
                with torch.no_grad():
                    ours[name] = _median_ms(run, repeats, sync)
            enc.cpu()
        if backward:
            reference = _median_ms(fwd_bwd(lambda: ref.encoder_forward(enc, xyz)),
                                   max(1, repeats - 1))
        else:
            with torch.no_grad():
                reference = _median_ms(lambda: ref.encoder_forward(enc, xyz),
                                       max(1, repeats - 1))
        row = {"op": label, "reference_ms": reference,
               **{f"{k}_ms": v for k, v in ours.items()}, "speedup": reference / ours["cpu"]}
        rows.append(row)
    return rows


def median_ms_on(fn: Callable[[], Any], repeats: int, device: Any, warmup: bool = True
                 ) -> float:
    """Median milliseconds of `repeats` calls after one warm-up call: CUDA events on a GPU
    (the device's own timeline, no host round trip in the figure), the wall clock elsewhere."""
    import torch

    if warmup:
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if torch.device(device).type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def bench_ops_device(device: Any, batch_size: int = 16, num_points: int = 2048,
                     repeats: int = 10, encoder: bool = True, encoder_config: Any = None,
                     seed: int = 0, warmup: bool = True) -> list[dict[str, Any]]:
    """`bench_ops` with both sides on one device: our ops (whatever backend they dispatch to
    there: the Triton kernels on CUDA) against the reference utility's algorithms run on the
    same device, so the figures compare algorithms, not machines; medians over CUDA-event
    timings on a GPU. `encoder_config` (an EncoderConfig) sizes the encoder and the first
    level's ops (default: the models' encoder); `warmup`: one untimed call before each
    figure."""
    import torch

    from affcli import ops
    from affcli.bench import baseline_ops as ref
    from affcli.nn.pointnet2 import EncoderConfig, PointNet2Encoder, gather_rows

    cfg = encoder_config or EncoderConfig()
    if batch_size < 1 or repeats < 1:
        raise AffError("--batch-size/--repeats", "must be at least 1")
    if num_points < cfg.sa1_centers:
        raise AffError("--points", f"must be at least {cfg.sa1_centers} (the first level's "
                       "centres)")
    dev = torch.device(device)
    xyz = realistic_clouds(batch_size, num_points, seed).to(dev)
    m = cfg.sa1_centers
    centers = gather_rows(xyz, ops.farthest_point_sample(xyz, m))
    scales = list(zip(cfg.sa1_radii, cfg.sa1_neighbors, strict=True))
    idxs = [ops.ball_query(xyz, centers, r, k) for r, k in scales]
    both = torch.cat([xyz, xyz], dim=-1).transpose(1, 2).contiguous()  # [features; xyz]
    coarse = torch.randn(batch_size, 128, m, generator=torch.Generator().manual_seed(seed)
                         ).to(dev)

    def ours_interp() -> Any:
        d, i = ops.three_nn(xyz, centers)
        w = 1.0 / (d + 1e-8)
        return ops.three_interpolate(coarse, i, w / w.sum(-1, keepdim=True))

    def ref_interp() -> Any:
        d, i = ref.square_distance(xyz, centers).sort(dim=-1)
        w = 1.0 / (d[:, :, :3] + 1e-8)
        w = w / w.sum(-1, keepdim=True)
        return (ref.index_points(coarse.transpose(1, 2), i[:, :, :3]) * w.unsqueeze(-1)).sum(2)

    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (f"FPS {num_points}->{m}", lambda: ops.farthest_point_sample(xyz, m),
         lambda: ref.farthest_point_sample(xyz, m)),
        ("ball query x3 (sa1)", lambda: [ops.ball_query(xyz, centers, r, k) for r, k in scales],
         lambda: [ref.ball_query(xyz, centers, r, k) for r, k in scales]),
        ("gathers x3 (sa1)", lambda: [ops.gather_group(both, i) for i in idxs],
         lambda: [torch.cat([ref.index_points(xyz, i), ref.index_points(xyz, i)], -1)
                  for i in idxs]),
        ("3-NN + interpolation", ours_interp, ref_interp),
    ]
    if encoder:
        torch.manual_seed(seed)
        enc = PointNet2Encoder(cfg).to(dev)

        def run(forward: Callable[[], Any], mode: str, backward: bool) -> Callable[[], None]:
            def go() -> None:
                getattr(enc, mode)()
                with torch.set_grad_enabled(backward):
                    levels = forward()
                    if backward:
                        sum(f.sum() for _, f in levels[1:]).backward()
            return go

        for label, mode, backward in (("encoder forward (eval)", "eval", False),
                                      ("encoder forward (train)", "train", False),
                                      ("encoder forward+backward", "train", True)):
            cases.append((label, run(lambda: enc(xyz), mode, backward),
                          run(lambda: ref.encoder_forward(enc, xyz), mode, backward)))
    rows = []
    for op, ours, reference in cases:
        ours_ms = median_ms_on(ours, repeats, dev, warmup)
        ref_ms = median_ms_on(reference, repeats, dev, warmup)
        rows.append({"op": op, "ours_ms": ours_ms, "reference_ms": ref_ms,
                     "speedup": ref_ms / ours_ms})
    return rows


def bench_metrics(samples: int = 2416, points: int = 2048, seed: int = 0) -> dict[str, Any]:
    """Seconds for all four metrics over `samples` x `points`: our compiled per-sample pass vs
    the reference evaluation's per-sample loop (sklearn roc_auc_score, numpy IoU/SIM/MAE),
    and the largest difference between the two."""
    from sklearn.metrics import roc_auc_score

    from affcli import metrics

    rng = np.random.default_rng(seed)
    gt = np.clip(rng.random((samples, points)) ** 3 * 1.3, 0, 1)
    pred = np.clip(gt * 0.6 + rng.random((samples, points)) * 0.5, 0, 1).astype(np.float32)
    metrics.per_sample(pred[:2], gt[:2])  # warm up: load the compiled kernel
    t0 = time.perf_counter()
    ours = metrics.per_sample(pred, gt)
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    thresholds = np.linspace(0, 1, 20)
    ref = {"aiou": [], "auc": [], "sim": [], "mae": []}
    for p, g in zip(pred, gt, strict=True):
        t = (g >= 0.5).astype(int)
        if t.sum() == 0:
            ref["auc"].append(np.nan)
            ref["aiou"].append(np.nan)
        else:
            ref["auc"].append(roc_auc_score(t, p))
            ref["aiou"].append(np.mean([np.sum((p >= th).astype(int) & t)
                                        / np.sum((p >= th).astype(int) | t)
                                        for th in thresholds]))
        ref["sim"].append(np.minimum(p / (p.sum() + 1e-12), g / (g.sum() + 1e-12)).sum())
        ref["mae"].append(np.mean(np.abs(p - g)))
    ref_s = time.perf_counter() - t0
    diff = max(float(np.nanmax(np.abs(ours[k].numpy() - np.array(v)))) for k, v in ref.items())
    return {"samples": samples, "points": points, "ours_s": ours_s, "reference_s": ref_s,
            "speedup": ref_s / ours_s, "max_abs_difference": diff}


def bench_train(names: Sequence[str], batch_size: int | None = None, steps: int = 3,
                num_points: int | None = None, seed: int = 0,
                announce: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Samples/s of one training step (forward, loss, backward, optimizer step) per model,
    on batches of a small synthetic set of the model's own dataset kind, data loading
    excluded, and where the step's time goes (`phases_ms`: see bench/phases.py). Batch
    size: the paper's unless given. One warm-up step, then the median.
    `announce` receives a line saying what is timed, once the arguments are checked."""
    import torch
    from torch.utils.data import DataLoader

    from affcli import models
    from affcli.bench.phases import step_phases
    from affcli.engine.trainer import TrainStep

    classes = [models.model_class(name) for name in names]  # unknown names fail before any work
    if steps < 1 or (batch_size is not None and batch_size < 1):
        raise AffError("--steps/--batch-size", "must be at least 1")
    for name, cls in zip(names, classes, strict=True):
        if not cls.dataset_kinds:
            raise AffError("--model", f"{name} declares no dataset kinds to train on")
    from affcli.memory import keep_freed_memory

    kept = keep_freed_memory()
    if announce is not None:
        announce(f"timing {', '.join(names)} on {torch.get_num_threads()} CPU threads"
                 f"{'' if kept else ' (glibc returns freed memory: AFFCLI_MALLOC=system)'} ...")
    rows = []
    with tempfile.TemporaryDirectory(prefix="affcli-bench-train-") as tmp:
        made: dict[str, Path] = {}
        for name, cls in zip(names, classes, strict=True):
            kind = cls.dataset_kinds[0]
            if kind not in made:
                synthesize(kind, Path(tmp) / kind, seed=seed, shapes_per_class=2)
                made[kind] = Path(tmp) / f"{kind}.h5"
                prepare(kind, Path(tmp) / kind, "seen", "full", made[kind])
            recipe = cls.train_recipe
            bs = batch_size or int(recipe.get("batch_size", 16))
            ds = open_dataset(made[kind], "train", seed=seed,
                              pairing_num=int(recipe.get("pairing_num", 1)),
                              num_points=num_points)
            batch = next(iter(DataLoader(ds, batch_size=bs, shuffle=False)))
            torch.manual_seed(seed)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model = models.build(name, n_points=ds.num_points)
            model.train()
            params = model.optimizer_groups(1e-4, 0.0, 1e-6)
            opt = torch.optim.Adam([g for g in params if g["params"]], lr=1e-4)
            step = TrainStep(model)

            def one(opt: Any = opt, step: Any = step, batch: Any = batch) -> None:
                opt.zero_grad(set_to_none=True)
                step(batch).backward()
                opt.step()

            seconds = _median_ms(one, steps) / 1000
            # then the same steps again with the parts timed (the hooks cost a little, so
            # the step time above is measured without them)
            phases = step_phases(model, lambda step=step, batch=batch: step(batch), opt, steps,
                                 warm_up=False)
            rows.append({"model": name, "dataset": kind, "batch_size": bs,
                         "clouds_per_sample": int(recipe.get("pairing_num", 1)),
                         "points": ds.num_points, "step_s": seconds,
                         "freed_memory_kept": kept,
                         "samples_per_s": bs / seconds, "phases_ms": phases,
                         "trainable_parameters": sum(p.numel() for p in model.parameters()
                                                     if p.requires_grad)})
    return rows
