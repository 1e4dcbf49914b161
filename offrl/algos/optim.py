"""Optimiser and target-network helpers shared by the agents.

Adam runs as one fused kernel over every tensor of a network (all members at once) where the
device supports it (CPU and CUDA in torch >= 2.4): measured on the 2-core build machine for a
5-seed twin critic (0.7 M parameters), one step takes 0.50 ms fused, 1.6 ms foreach and 5.5 ms
with the per-tensor loop. Adam is element-wise, so members stay independent inside one optimiser.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["make_adam", "soft_update_", "hard_update_"]


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, implementation: str = "auto",
              **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam with the fastest implementation available.

    implementation: "auto" (fused where supported, else foreach), "fused", "foreach" or
    "single" (the plain per-tensor loop).
    """
    params = list(params)
    if implementation == "auto":
        try:
            return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
    if implementation == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
    if implementation == "foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
    if implementation == "single":
        return torch.optim.Adam(params, lr=lr, foreach=False, **kwargs)
    raise ValueError(f"Adam implementation must be auto, fused, foreach or single; got "
                     f"{implementation!r}")


@torch.no_grad()
def soft_update_(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """Polyak averaging in place: target <- target + tau * (online - target)
    (= (1 - tau) * target + tau * online, CORL's soft_update), one foreach kernel."""
    torch._foreach_lerp_(target, online, tau)


@torch.no_grad()
def hard_update_(target: list[torch.Tensor], online: list[torch.Tensor]) -> None:
    torch._foreach_copy_(target, online)
