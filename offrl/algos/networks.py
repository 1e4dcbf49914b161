"""Ensembles of MLPs with a leading member dimension.

Every network here is an ensemble: a weight of shape (M, out, in) (nn.Linear's layout per member)
and a bias (M, 1, out), applied to inputs (M, B, in) with one batched matmul per layer
(`ensemble_linear`). A member is one independent network.
Seeds and per-seed copies fold into the same dimension: an agent training S seeds with twin
critics holds one critic ensemble of M = S * 2 members, laid out seed-major (member m = s * K + k
is copy k of seed s), so `x.view(S, K, ...)` separates them again.

Initialisation is per member and takes an explicit `torch.Generator`, so member m can be drawn
from its own seed's generator exactly as a one-seed agent would draw it (see `init_member_`).
The default scheme reproduces `torch.nn.Linear`'s own init (kaiming-uniform with a = sqrt(5),
i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, which is what CORL's TD3+BC and IQL
use); orthogonal and Xavier schemes cover CORL's CQL (orthogonal hidden layers with gain sqrt(2),
final layer with gain 1e-2, zero biases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

__all__ = [
    "EnsembleLinear",
    "EnsembleMLP",
    "ensemble_linear",
    "padded_size",
    "LayerInit",
    "TORCH_DEFAULT",
    "expand_members",
]


@dataclass(frozen=True)
class LayerInit:
    """How to draw one layer of one member.

    scheme: "torch" (nn.Linear's default: U(±1/sqrt(fan_in)) weight and bias), "orthogonal"
    or "xavier_uniform" (weight with `gain`, bias zero), "zeros" (weight and bias zero).
    """

    scheme: str = "torch"
    gain: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in ("torch", "orthogonal", "xavier_uniform", "zeros"):
            raise ValueError(f"LayerInit.scheme must be one of torch, orthogonal, xavier_uniform, "
                             f"zeros; got {self.scheme!r}")


TORCH_DEFAULT = LayerInit("torch")


_NARROW = 32  # a layer side below this many features takes the skinny-matrix formulas

# The three products of an affine layer y = x @ w^T + b (w stored (M, out, in) like nn.Linear),
# each written in the orientation MKL's batched gemm runs fast for its shape. With a narrow side
# (an output of 1-3 units, an input of 11-17 features) torch's default orientation for
# `baddbmm` and its backward was 2-4x slower on the build machine: the 256 -> 1 layer took
# 180 us forward where the transposed product takes 20 us (M = 2, batch 256, 1 thread), and the
# same held for the weight gradients of the first and last layers.


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (M, B, in), w (M, out, in), b (M, 1, out) -> (M, B, out)."""
    if w.shape[1] == 1:  # one output: (w @ x^T)^T, a row vector per member
        return torch.bmm(w, x.transpose(1, 2)).transpose(1, 2) + b
    return torch.baddbmm(b, x, w.transpose(1, 2))


def _grad_input(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dL/dx = g @ w: (M, B, out), (M, out, in) -> (M, B, in)."""
    if w.shape[1] == 1:
        return g * w
    if w.shape[2] < _NARROW:
        return torch.bmm(w.transpose(1, 2), g.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(g, w)


def _grad_weight(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dL/dw = g^T @ x: (M, B, out), (M, B, in) -> (M, out, in), contiguous."""
    if x.shape[2] < _NARROW:
        return torch.bmm(x.transpose(1, 2), g).transpose(1, 2).contiguous()
    return torch.bmm(g.transpose(1, 2), x)


def _grad_bias(g: torch.Tensor, padded: int) -> torch.Tensor:
    """dL/db for a bias stored with `padded` columns (the padding gets zeros)."""
    gb = g.sum(dim=1, keepdim=True)
    if padded == gb.shape[2]:
        return gb
    out = gb.new_zeros(gb.shape[0], 1, padded)
    out[..., : gb.shape[2]] = gb
    return out


class _EnsembleLinearFn(torch.autograd.Function):
    """One ensemble affine layer; `b` may carry padding columns beyond w's outputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.padded = b.shape[2]
        return _affine(x, w, b[..., : w.shape[1]])

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = _grad_input(g, w) if ctx.needs_input_grad[0] else None
        gw = _grad_weight(g, x) if ctx.needs_input_grad[1] else None
        gb = _grad_bias(g, ctx.padded) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


class _ReluMLPFn(torch.autograd.Function):
    """A whole ReLU MLP ensemble as one autograd node: apply(x, w0, b0, w1, b1, ...).

    One node instead of ~3 per layer cuts the per-call overhead (autograd bookkeeping, Python,
    dispatch) that dominates small updates, computes only the gradients asked for, and runs
    the ReLU backward in place on its own gradient buffers. Saves the input and every hidden
    activation (after ReLU, which is also the ReLU's mask).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        n = len(params) // 2
        h, hidden = x, []
        for i in range(n):
            w, b = params[2 * i], params[2 * i + 1]
            h = _affine(h, w, b[..., : w.shape[1]])
            if i < n - 1:
                h = torch.relu_(h)
                hidden.append(h)
        ctx.save_for_backward(x, *hidden, *params[0::2])
        ctx.padded = [b.shape[2] for b in params[1::2]]
        return h

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        saved = ctx.saved_tensors
        n = len(ctx.padded)
        inputs, weights = saved[:n], saved[n:]  # inputs[i] feeds layer i
        needs = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * (1 + 2 * n)
        for i in range(n - 1, -1, -1):
            x_i, w = inputs[i], weights[i]
            if needs[1 + 2 * i]:
                grads[1 + 2 * i] = _grad_weight(g, x_i)
            if needs[2 + 2 * i]:
                grads[2 + 2 * i] = _grad_bias(g, ctx.padded[i])
            if i > 0:
                g = _grad_input(g, w)  # a fresh buffer, so the ReLU backward may overwrite it
                # ReLU backward: x_i is the ReLU's output, positive exactly where it passed
                g = torch.ops.aten.threshold_backward.grad_input(g, x_i, 0, grad_input=g)
            elif needs[0]:
                grads[0] = _grad_input(g, w)
        return tuple(grads)


def ensemble_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (M, B, in), weight (M, out, in), bias (M, 1, out or more) -> (M, B, out).

    Columns of `bias` beyond `out` (padding) are ignored and get a zero gradient."""
    return _EnsembleLinearFn.apply(x, weight, bias)


def padded_size(n: int) -> int:
    """n rounded up to a multiple of 16 (the widest float SIMD vector, AVX-512)."""
    return -(-n // _PAD) * _PAD


_PAD = 16


class EnsembleLinear(nn.Module):
    """M independent affine maps: y[m] = x[m] @ weight[m]^T + bias[m].

    weight (M, out, in) — member m's weight is exactly an nn.Linear weight — and bias
    (M, 1, out); forward takes x (M, B, in) -> (M, B, out). `members` selects a subset of
    members (a slice, e.g. `slice(0, None, 2)` for the first twin of every seed); x then has
    that many members.

    The bias parameter is stored as `bias_padded` (M, 1, out rounded up to 16) and `bias` is a
    view of its first `out` columns. The padding never receives a gradient and stays zero. It
    is there so that every member's slice of every parameter is a whole number of SIMD vectors:
    element-wise kernels (fused Adam, lerp) round their scalar tail differently from their
    vector body, and without the padding a 1-seed run and member s of an S-seed run could
    differ in the last bit (they are bit-identical with it, on 1 CPU thread).
    """

    def __init__(self, in_features: int, out_features: int, members: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features, self.members = in_features, out_features, members
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features, **kw))
        self.bias_padded = nn.Parameter(torch.zeros(members, 1, padded_size(out_features), **kw))

    @property
    def bias(self) -> torch.Tensor:
        """(M, 1, out): a view of `bias_padded`."""
        b = self.bias_padded
        return b if b.shape[-1] == self.out_features else b[..., : self.out_features]

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        if members is None:
            return _EnsembleLinearFn.apply(x, self.weight, self.bias_padded)
        return _EnsembleLinearFn.apply(x, self.weight[members], self.bias_padded[members])

    @torch.no_grad()
    def init_member_(self, m: int, generator: torch.Generator, init: LayerInit = TORCH_DEFAULT) -> None:
        """Draw member m's weight then bias from `generator` (on the CPU, then copied in), in
        the order and layout nn.Linear uses, so a member equals an `nn.Linear` initialised from
        the same generator state."""
        fan_in, fan_out = self.in_features, self.out_features
        w = torch.empty(fan_out, fan_in, dtype=torch.float32)
        b = torch.zeros(fan_out, dtype=torch.float32)
        if init.scheme == "torch":
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            w.uniform_(-bound, bound, generator=generator)
            b.uniform_(-bound, bound, generator=generator)
        elif init.scheme == "orthogonal":
            nn.init.orthogonal_(w, gain=init.gain, generator=generator)
        elif init.scheme == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=init.gain, generator=generator)
        else:  # zeros
            w.zero_()
        self.weight[m].copy_(w)
        self.bias_padded[m, 0, : self.out_features].copy_(b)

    def extra_repr(self) -> str:
        return f"members={self.members}, in={self.in_features}, out={self.out_features}"


_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": nn.functional.gelu,
                "silu": nn.functional.silu, "elu": nn.functional.elu}


class EnsembleMLP(nn.Module):
    """An ensemble of M MLPs: in_dim -> hidden_dims... -> out_dim, same shape for every member.

    activation between hidden layers ("relu" default), optional LayerNorm after each hidden
    affine map (before the activation; per-member scale and shift), optional output activation
    ("tanh" for deterministic actors). forward: x (M, B, in) -> (M, B, out); with `members` a
    slice, only those members run (x then has that many).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int], members: int,
                 activation: str = "relu", output_activation: str | None = None,
                 layer_norm: bool = False, device: torch.device | str | None = None):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {activation!r}")
        if output_activation is not None and output_activation not in _ACTIVATIONS:
            raise ValueError(f"output_activation must be None or one of {sorted(_ACTIVATIONS)}; "
                             f"got {output_activation!r}")
        dims = [int(in_dim), *[int(h) for h in hidden_dims], int(out_dim)]
        if any(d <= 0 for d in dims):
            raise ValueError(f"layer sizes must be positive; got {dims}")
        self.dims, self.members = dims, members
        self.layers = nn.ModuleList(
            EnsembleLinear(dims[i], dims[i + 1], members, device=device) for i in range(len(dims) - 1))
        self.layer_norm = layer_norm
        if layer_norm:
            self.norm_weights = nn.ParameterList(
                nn.Parameter(torch.ones(members, 1, h, device=device)) for h in dims[1:-1])
            self.norm_biases = nn.ParameterList(
                nn.Parameter(torch.zeros(members, 1, h, device=device)) for h in dims[1:-1])
        self._act = _ACTIVATIONS[activation]
        self._relu = activation == "relu"
        self._out_act = None if output_activation is None else _ACTIVATIONS[output_activation]
        # Plain ReLU MLPs (every network of TD3+BC, IQL and CQL) run as one autograd node.
        self.fused = self._relu and not layer_norm
        # The dtype the fused node computes in (None: the parameters' own). torch.bfloat16
        # runs the matmuls, activations and gradients in bf16 against fp32 master weights: the
        # parameters, optimiser state, inputs and outputs stay fp32 (see `set_compute_dtype`).
        self.compute_dtype: torch.dtype | None = None

    def set_compute_dtype(self, dtype: torch.dtype | None) -> "EnsembleMLP":
        """Compute the forward and backward in `dtype` (e.g. torch.bfloat16, where the CPU has
        bf16 instructions: AVX512-BF16 or AMX) with fp32 weights kept as the master copy; None
        restores full precision. Plain ReLU MLPs only."""
        if dtype is not None and not self.fused:
            raise NotImplementedError("a compute dtype needs a plain ReLU MLP (no layer norm)")
        self.compute_dtype = dtype
        return self

    def forward(self, x: torch.Tensor, members: slice | None = None,
                detach_params: bool = False) -> torch.Tensor:
        """detach_params: the network as a fixed function of x — gradients reach x but no weight
        gradient is computed (e.g. an actor's loss through a critic); plain ReLU MLPs only."""
        if detach_params and not self.fused:
            raise NotImplementedError("detach_params needs a plain ReLU MLP (no layer norm)")
        if self.fused:
            params = []
            for layer in self.layers:
                params += [layer.weight, layer.bias_padded]
            if members is not None:
                params = [p[members] for p in params]
            if detach_params:
                params = [p.detach() for p in params]
            dtype = self.compute_dtype
            if dtype is not None and dtype != x.dtype:
                # The casts are autograd ops: gradients come back to the fp32 weights as fp32.
                x = _ReluMLPFn.apply(x.to(dtype), *[p.to(dtype) for p in params]).to(x.dtype)
            else:
                x = _ReluMLPFn.apply(x, *params)
            return x if self._out_act is None else self._out_act(x)
        layers = self.layers
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            x = layer(x, members)
            if i < last:
                if self.layer_norm:
                    w, b = self.norm_weights[i], self.norm_biases[i]
                    if members is not None:
                        w, b = w[members], b[members]
                    x = torch.addcmul(b, nn.functional.layer_norm(x, x.shape[-1:]), w)
                    x = self._act(x)
                elif self._relu:
                    x = torch.relu_(x)  # safe: ensemble_linear does not keep its output
                else:
                    x = self._act(x)
        if self._out_act is not None:
            x = self._out_act(x)
        return x

    @torch.no_grad()
    def init_member_(self, m: int, generator: torch.Generator,
                     hidden_init: LayerInit = TORCH_DEFAULT,
                     final_init: LayerInit = TORCH_DEFAULT) -> None:
        """Draw member m's layers in order (first to last) from `generator`."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer.init_member_(m, generator, final_init if i == last else hidden_init)
        if self.layer_norm:
            for w, b in zip(self.norm_weights, self.norm_biases):
                w[m].fill_(1.0)
                b[m].zero_()


def expand_members(x: torch.Tensor, copies: int) -> torch.Tensor:
    """(S, B, D) -> (S * copies, B, D): each seed's input repeated for its `copies` members
    (seed-major, matching the ensemble layout)."""
    if copies == 1:
        return x
    s = x.shape[0]
    return x.unsqueeze(1).expand(s, copies, *x.shape[1:]).reshape(s * copies, *x.shape[1:])
