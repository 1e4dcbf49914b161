"""Optimiser and target-network helpers shared by the agents.

Adam runs as one fused kernel over every tensor of a network (all members at once) where the
device supports it (CPU and CUDA in torch >= 2.4): measured on the 2-core build machine for a
5-seed twin critic (0.7 M parameters), one step takes 0.50 ms fused, 1.6 ms foreach and 5.5 ms
with the per-tensor loop. Adam is element-wise, so members stay independent inside one optimiser.

`FastAdam` is `torch.optim.Adam(fused=True)` with a lean `step`: it makes the same
`_fused_adam_` call on the same state, but skips the generic per-step Python work (hooks,
profiler ranges, re-scanning every parameter's state, regrouping tensors by device), which
costs about as much as the kernel itself for small networks. Its state_dict is Adam's, and
LR schedulers work with it unchanged.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["FastAdam", "make_adam", "soft_update_", "hard_update_"]


class FastAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) whose step() calls the fused kernel directly.

    Supported: lr (float, may be changed by a scheduler), betas, eps, weight_decay (L2, as
    Adam). Not supported: amsgrad, maximize, capturable, differentiable, step hooks, closures.
    Every parameter must have a gradient at each step (all of ours do); otherwise `step` falls
    back to Adam's own.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
        self._groups: list | None = None

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._groups = None

    def _build(self) -> list:
        groups = []
        for group in self.param_groups:
            params = list(group["params"])
            for p in params:
                state = self.state[p]
                if len(state) == 0:  # as Adam._init_group does for fused
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            groups.append((group, params, [self.state[p]["exp_avg"] for p in params],
                           [self.state[p]["exp_avg_sq"] for p in params],
                           [self.state[p]["step"] for p in params]))
        return groups

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            return super().step(closure)
        if self._groups is None:
            self._groups = self._build()
        for group, params, exp_avgs, exp_avg_sqs, steps in self._groups:
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                self._groups = None
                return super().step()
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                               lr=group["lr"], beta1=beta1, beta2=beta2,
                               weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=False, grad_scale=None, found_inf=None)
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, implementation: str = "auto",
              **kwargs) -> torch.optim.Adam:
    """Adam with the fastest implementation available.

    implementation: "auto" (FastAdam where fused Adam is supported, else foreach), "fast"
    (FastAdam), "fused" (torch.optim.Adam(fused=True)), "foreach" or "single" (the plain
    per-tensor loop).
    """
    params = list(params)
    if implementation == "auto":
        try:
            return FastAdam(params, lr=lr, **kwargs)
        except (RuntimeError, ValueError):
            return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
    if implementation == "fast":
        return FastAdam(params, lr=lr, **kwargs)
    if implementation == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    if implementation == "foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
    if implementation == "single":
        return torch.optim.Adam(params, lr=lr, foreach=False, **kwargs)
    raise ValueError(f"Adam implementation must be auto, fast, fused, foreach or single; got "
                     f"{implementation!r}")


@torch.no_grad()
def soft_update_(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """Polyak averaging in place: target <- target + tau * (online - target)
    (= (1 - tau) * target + tau * online, CORL's soft_update), one foreach kernel."""
    torch._foreach_lerp_(target, online, tau)


@torch.no_grad()
def hard_update_(target: list[torch.Tensor], online: list[torch.Tensor]) -> None:
    torch._foreach_copy_(target, online)
