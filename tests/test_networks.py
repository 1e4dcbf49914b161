"""Ensemble layers: same numbers as one nn.Linear per member, correct gradients, per-member init."""

import copy
import math

import pytest
import torch
from torch import nn

from offrl.algos.base import derive_seed, member_generators
from offrl.algos.networks import (EnsembleLinear, EnsembleMLP, LayerInit, _ReluMLPFn,
                                  ensemble_linear, expand_members, padded_size)


def _init_all(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in range(net.members):
        net.init_member_(m, g)
    return net


def _reference(net: EnsembleMLP, x: torch.Tensor) -> torch.Tensor:
    """Member by member with F.linear."""
    out = []
    for m in range(net.members):
        h = x[m]
        for i, layer in enumerate(net.layers):
            h = nn.functional.linear(h, layer.weight[m], layer.bias[m, 0])
            if i < len(net.layers) - 1:
                h = torch.relu(h)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("in_dim,hidden,out_dim", [(14, (40, 36), 1), (11, (40,), 3), (5, (7,), 2),
                                                   (40, (33,), 1)])
def test_forward_and_gradients_match_per_member_linear(in_dim, hidden, out_dim):
    # narrow (<32) and wide inputs, 1 and several outputs: every formula in _EnsembleLinearFn
    net = _init_all(EnsembleMLP(in_dim, out_dim, hidden, members=3)).double()
    x = torch.randn(3, 6, in_dim, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(net(x), _reference(net, x))

    params = [net.layers[i].weight for i in range(len(net.layers))]
    biases = [net.layers[i].bias.detach().clone() for i in range(len(net.layers))]

    def f(x, *ws):
        h = x
        for i, w in enumerate(ws):
            h = ensemble_linear(h, w, biases[i].requires_grad_())
            if i < len(ws) - 1:
                h = torch.relu(h)
        return h

    assert torch.autograd.gradcheck(f, (x,) + tuple(p.detach().requires_grad_() for p in params))
    bias_only = lambda b: ensemble_linear(x.detach(), params[0].detach(), b)  # noqa: E731
    assert torch.autograd.gradcheck(bias_only, (biases[0].requires_grad_(),))


@pytest.mark.parametrize("dims", [(14, (40, 36), 1), (11, (40,), 3), (40, (8, 33), 2)])
def test_fused_relu_mlp_gradients(dims):
    """The whole-MLP autograd node: gradcheck, and the same numbers as the layer-by-layer path
    (including only some gradients asked for, and member slices)."""
    in_dim, hidden, out_dim = dims
    net = _init_all(EnsembleMLP(in_dim, out_dim, hidden, members=4)).double()
    assert net.fused
    x = torch.randn(4, 5, in_dim, dtype=torch.double, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: _ReluMLPFn.apply(x, *ps), (x, *params))

    layered = copy.deepcopy(net)
    layered.fused = False
    for members in (None, slice(1, None, 2)):
        xs = x if members is None else x[members]
        for want in ("all", "input_only", "params_only"):
            outs = []
            for model in (net, layered):
                model.zero_grad()
                xi = xs.detach().clone().requires_grad_(want != "params_only")
                y = model(xi, members=members)
                inputs = [xi] if want == "input_only" else None
                (y.square().sum()).backward(inputs=inputs)
                outs.append([xi.grad] + [p.grad for p in model.parameters()])
            for a, b in zip(*outs):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b)


def test_float32_gradients_match_autograd_baddbmm():
    torch.manual_seed(0)
    for i, o in [(14, 256), (256, 256), (256, 1), (256, 3)]:
        layer = _init_all(EnsembleLinear(i, o, 4))
        x = torch.randn(4, 256, i, requires_grad=True)
        g = torch.randn(4, 256, o)
        layer(x).backward(g)
        w = layer.weight.detach().transpose(1, 2).clone().requires_grad_()
        b = layer.bias.detach().clone().requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        torch.baddbmm(b, x2, w).backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.weight.grad, w.grad.transpose(1, 2), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(layer.bias_padded.grad[..., :o], b.grad, rtol=1e-4, atol=1e-4)
        assert (layer.bias_padded.grad[..., o:] == 0).all()


def test_bias_padding_is_a_whole_number_of_simd_vectors():
    layer = EnsembleLinear(256, 3, members=5)
    assert layer.bias_padded.shape == (5, 1, 16) and layer.bias.shape == (5, 1, 3)
    assert EnsembleLinear(256, 256, 2).bias.shape == (2, 1, 256)
    assert padded_size(1) == 16 and padded_size(16) == 16 and padded_size(17) == 32


def test_torch_init_equals_nn_linear_with_the_same_generator_state():
    for i, o in [(14, 256), (256, 1)]:
        layer = EnsembleLinear(i, o, 2)
        layer.init_member_(1, torch.Generator().manual_seed(5))
        torch.manual_seed(5)
        ref = nn.Linear(i, o)
        torch.testing.assert_close(layer.weight[1], ref.weight.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(layer.bias[1, 0], ref.bias.detach(), rtol=1e-6, atol=0)
        bound = 1 / math.sqrt(i)
        assert layer.weight[1].abs().max() <= bound and layer.bias[1].abs().max() <= bound


def test_orthogonal_and_xavier_schemes():
    net = EnsembleMLP(11, 1, (64, 64), members=2)
    g = torch.Generator().manual_seed(0)
    for m in range(2):
        net.init_member_(m, g, hidden_init=LayerInit("orthogonal", math.sqrt(2)),
                         final_init=LayerInit("orthogonal", 1e-2))
    w = net.layers[1].weight[0]
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(64), atol=1e-4, rtol=0)
    assert (net.layers[0].bias == 0).all() and (net.layers[2].bias == 0).all()
    assert net.layers[2].weight.norm(dim=-1).allclose(torch.full((2, 1), 1e-2), atol=1e-6)
    layer = EnsembleLinear(256, 1, 1)
    layer.init_member_(0, g, LayerInit("xavier_uniform", 1e-2))
    assert layer.weight.abs().max() <= 1e-2 * math.sqrt(6 / 257)
    with pytest.raises(ValueError, match="scheme"):
        LayerInit("kaiming")


def test_members_are_independent_and_member_slices():
    net = _init_all(EnsembleMLP(14, 1, (32, 32), members=4))
    x = torch.randn(4, 8, 14)
    y = net(x)
    with torch.no_grad():
        net.layers[0].weight[1].add_(1.0)  # member 1 changes, nobody else does
    y2 = net(x)
    assert torch.equal(y[[0, 2, 3]], y2[[0, 2, 3]]) and not torch.equal(y[1], y2[1])
    torch.testing.assert_close(net(x[0::2], members=slice(0, None, 2)), y2[0::2])


def test_layer_norm_and_output_activation():
    net = _init_all(EnsembleMLP(5, 2, (16,), members=2, layer_norm=True, output_activation="tanh"))
    x = torch.randn(2, 7, 5)
    y = net(x)
    assert y.shape == (2, 7, 2) and y.abs().max() < 1
    y.sum().backward()
    assert net.norm_weights[0].grad is not None and net.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="activation"):
        EnsembleMLP(5, 2, (16,), members=2, activation="swishy")


def test_expand_members_is_seed_major():
    x = torch.arange(3 * 2 * 1.0).view(3, 2, 1)
    e = expand_members(x, 2)
    assert e.shape == (6, 2, 1)
    assert torch.equal(e[0], x[0]) and torch.equal(e[1], x[0]) and torch.equal(e[2], x[1])
    assert expand_members(x, 1) is x


def test_seed_streams_are_independent_and_stable():
    assert derive_seed(0, "init") != derive_seed(0, "sampler") != derive_seed(1, "init")
    assert derive_seed(3, "act") == derive_seed(3, "act")
    a = member_generators([3, 4], "init")
    b = member_generators([4], "init")
    assert torch.equal(torch.rand(5, generator=a[1]), torch.rand(5, generator=b[0]))
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, "init")


def test_bf16_compute_keeps_fp32_weights_and_close_gradients():
    torch.manual_seed(0)
    net = _init_all(EnsembleMLP(14, 1, (256, 256), members=4))
    low = copy.deepcopy(net).set_compute_dtype(torch.bfloat16)
    x = torch.randn(4, 256, 14)
    y, y_low = net(x), low(x)
    assert y_low.dtype == torch.float32
    torch.testing.assert_close(y_low, y, rtol=0, atol=0.02 * y.abs().max().item())
    assert not torch.equal(y_low, y)  # the matmuls really ran in bf16
    (y ** 2).mean().backward()
    (y_low ** 2).mean().backward()
    for p, q in zip(net.parameters(), low.parameters()):
        assert q.dtype == torch.float32 and q.grad.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.99, cos
    assert low.set_compute_dtype(None).compute_dtype is None
    with pytest.raises(NotImplementedError, match="plain ReLU"):
        EnsembleMLP(3, 1, (8,), members=2, layer_norm=True).set_compute_dtype(torch.bfloat16)
