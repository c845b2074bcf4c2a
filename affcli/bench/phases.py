"""Where a training step's time goes: forward and backward per part of the model, the loss
and the optimizer step, so the next person speeding a model up starts from the figures.

The parts are the model's own top-level submodules (`point_encoder`, `text_encoder`,
`img_encoder`, `decoder`, `fp1`...): whatever a model is made of, with no list of names to
keep up to date. A part's forward is timed between its forward pre- and post-hooks; its
backward is the sum of the autograd nodes its forward created, each timed between the node's
pre-hook and hook (autograd runs one node at a time on the CPU, so nothing is counted twice).
A part called several times (a fusion block between every level) sums its calls. What no part
claims is the loss's row (the loss functions and the glue between parts, forward and
backward). Times are wall-clock (synchronised on CUDA) and add up to the step.
"""

from __future__ import annotations

import time
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
    """The hooks timing one part. Forward: between its forward pre- and post-hooks. Backward:
    the autograd nodes its forward created (those reachable from its outputs without passing
    its inputs) are timed one by one, between each node's pre-hook and hook; on the CPU the
    engine runs one node at a time, so the figures are exclusive and add up."""

    def __init__(self, name: str, module: nn.Module, clock: _Clock, owned: set[Any]) -> None:
        self.name, self.clock, self.owned = name, clock, owned
        self.inputs: list[list[Any]] = []  # per open call: its inputs' grad_fn nodes
        self.handles = [module.register_forward_pre_hook(self._fwd_pre, with_kwargs=True),
                        module.register_forward_hook(self._fwd_post)]
        self.node_handles: list[Any] = []

    def _fwd_pre(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self.inputs.append([t.grad_fn for t in _grad_tensors([args, kwargs])
                            if t.grad_fn is not None])
        self.clock.start((self.name, "forward"))

    def _fwd_post(self, _module: nn.Module, _args: Any, out: Any) -> None:
        self.clock.stop((self.name, "forward"))
        stop = set(self.inputs.pop())
        if not torch.is_grad_enabled():
            return
        self.clock.start(("", "hooks"))  # (the graph walk is the timer's, not the model's)
        try:
            self._own_nodes(out, stop)
        finally:
            self.clock.stop(("", "hooks"))

    def _own_nodes(self, out: Any, stop: set[Any]) -> None:
        todo = [t.grad_fn for t in _grad_tensors(out) if t.grad_fn is not None]
        key = (self.name, "backward")
        while todo:
            node = todo.pop()
            if node is None or node in stop or node in self.owned:
                continue
            self.owned.add(node)
            self.node_handles += [
                node.register_prehook(lambda _g, key=key: self.clock.start(key)),
                node.register_hook(lambda _gi, _go, key=key: self.clock.stop(key))]
            todo.extend(n for n, _ in node.next_functions)

    def remove(self) -> None:
        for h in self.handles + self.node_handles:
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
        clock, owned = _Clock(device), set()
        timers = [_Part(name, part, clock, owned) for name, part in parts]
        try:
            optimizer.zero_grad(set_to_none=True)
            clock.start(("", "forward"))
            loss = loss_fn()
            clock.stop(("", "forward"))
            clock.start(("", "backward"))
            loss.backward()
            clock.stop(("", "backward"))
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
    forward = median(("", "forward")) - median(("", "hooks"))
    backward = median(("", "backward"))
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
