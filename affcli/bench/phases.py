"""Where a training step's time goes: forward and backward per part of the model, the loss
and the optimizer step, so the next person speeding a model up starts from the figures.

The parts are the model's own top-level submodules (`point_encoder`, `text_encoder`,
`img_encoder`, `decoder`, `fp1`...): whatever a model is made of, with no list of names to
keep up to date. Forward time is measured between forward pre- and post-hooks; backward time
between a part's full backward pre-hook (its output gradients are ready) and its backward hook
(its input gradients are done). A part called several times (a fusion block between every
level) sums its calls. What no part claims is reported as the loss (forward: the model's loss
outside its parts, i.e. the loss functions and glue; backward: the rest of the backward pass).
Times are wall-clock on the CPU (synchronised on CUDA), so they add up to the step.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.started: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.total: dict[tuple[str, str], float] = defaultdict(float)

    def start(self, key: tuple[str, str]) -> None:
        self.sync()
        self.started[key].append(time.perf_counter())

    def stop(self, key: tuple[str, str]) -> None:
        if self.started[key]:  # (a backward hook without its pre-hook: nothing to close)
            self.sync()
            self.total[key] += time.perf_counter() - self.started[key].pop()


def _needs_grad(args: Any, kwargs: dict[str, Any]) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad
               for a in (*args, *kwargs.values()))


def _grad_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors needing a gradient in a part's output, however nested (a list of levels,
    a Hugging Face output object, a dict)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, dict):
        value = list(value.values())
    elif hasattr(value, "__dict__") and not isinstance(value, nn.Module):
        value = list(vars(value).values())  # an output object (`.last_hidden_state`)
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _grad_tensors(v)]
    return []


class _Part:
    """The hooks timing one part. A call's backward starts when the gradients of all its
    outputs are ready; it ends when those of its inputs are done, or, for a part whose inputs
    need no gradient (an encoder fed the data), when the last of its parameters' gradients
    is. (Autograd may interleave parts whose backward can run at the same time; the figures
    are then approximate, and what no part claims is left to the loss's row.)"""

    def __init__(self, name: str, module: nn.Module, clock: _Clock) -> None:
        self.name, self.clock = name, clock
        self.by_inputs = False
        self.calls: list[float | None] = []  # per call: when its outputs' gradients were ready
        self.params_done: float | None = None
        self.handles = [module.register_forward_pre_hook(self._fwd_pre, with_kwargs=True),
                        module.register_forward_hook(self._fwd_post)]
        params = [p for p in module.parameters() if p.requires_grad]
        # a frozen part has no backward of its own (and a backward hook on it would make
        # autograd track its outputs)
        if params:
            self.handles.append(module.register_full_backward_hook(self._bwd_post))
            self.handles += [p.register_post_accumulate_grad_hook(self._param_done)
                             for p in params]

    def _fwd_pre(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self.by_inputs = self.by_inputs or _needs_grad(args, kwargs)
        self.clock.start((self.name, "forward"))

    def _fwd_post(self, _module: nn.Module, _args: Any, out: Any) -> None:
        self.clock.stop((self.name, "forward"))
        if not torch.is_grad_enabled() or not self.handles[2:]:
            return
        call = len(self.calls)
        self.calls.append(None)
        for t in _grad_tensors(out):
            t.register_hook(lambda g, call=call: self._output_grad(call))

    def _output_grad(self, call: int) -> None:
        self.clock.sync()
        self.calls[call] = time.perf_counter()  # the last output's gradient opens the call

    def _bwd_post(self, _module: nn.Module, _gin: Any, _gout: Any) -> None:
        if self.by_inputs:
            opened = [i for i, t in enumerate(self.calls) if t is not None]
            if opened:
                self.clock.sync()
                start = self.calls.pop(opened[-1])
                self.clock.total[(self.name, "backward")] += time.perf_counter() - start

    def _param_done(self, _param: torch.Tensor) -> None:
        self.params_done = time.perf_counter()

    def finish_backward(self) -> None:
        """After the backward pass: close a call that its parameters' gradients end."""
        opened = [t for t in self.calls if t is not None]
        if not self.by_inputs and opened and self.params_done is not None:
            self.clock.total[(self.name, "backward")] += self.params_done - min(opened)
        self.calls, self.params_done = [], None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def step_phases(model: nn.Module, loss_fn: Callable[[], torch.Tensor],
                optimizer: torch.optim.Optimizer, steps: int = 3, warm_up: bool = True
                ) -> dict[str, Any]:
    """Time `steps` training steps (after one warm-up step, unless the caller has run
    some) of `model`, whose loss `loss_fn()` computes; returns per-phase median
    milliseconds per step:
    {"parts": {name: {"forward": ms, "backward": ms}}, "loss": {"forward", "backward"},
    "optimizer": ms, "step": ms}."""
    device = next(model.parameters()).device
    parts = [(n, m) for n, m in model.named_children() if any(True for _ in m.parameters())]
    samples: list[dict[tuple[str, str], float]] = []
    for i in range(steps + int(warm_up)):
        clock = _Clock(device)
        timers = [_Part(name, part, clock) for name, part in parts]
        with warnings.catch_warnings():
            # a part whose output is not a tensor (a list of levels, an output object) has
            # no input-gradient hook: its backward ends at its parameters' gradients
            warnings.filterwarnings("ignore", message="For backward hooks to be called")
            try:
                optimizer.zero_grad(set_to_none=True)
                clock.start(("", "forward"))
                loss = loss_fn()
                clock.stop(("", "forward"))
                clock.start(("", "backward"))
                loss.backward()
                clock.stop(("", "backward"))
                for t in timers:
                    t.finish_backward()
                clock.start(("", "optimizer"))
                optimizer.step()
                clock.stop(("", "optimizer"))
            finally:
                for t in timers:
                    t.remove()
        if i or not warm_up:  # a warm-up step: allocations, numba and kernel caches
            samples.append(dict(clock.total))

    def median(key: tuple[str, str]) -> float:
        values = sorted(s.get(key, 0.0) for s in samples)
        return 1e3 * values[len(values) // 2]

    table = {name: {"forward": median((name, "forward")), "backward": median((name, "backward"))}
             for name, _ in parts}
    forward, backward = median(("", "forward")), median(("", "backward"))
    claimed_f = sum(p["forward"] for p in table.values())
    claimed_b = sum(p["backward"] for p in table.values())
    optimizer_ms = median(("", "optimizer"))
    return {
        "parts": table,
        "loss": {"forward": max(forward - claimed_f, 0.0),
                 "backward": max(backward - claimed_b, 0.0)},
        "optimizer": optimizer_ms,
        "step": forward + backward + optimizer_ms,
    }
