"""Gradients by reversal (docs/math.md section 11) equal plain autograd through the unrolled loop, in memory
that does not grow with the number of steps."""

import copy

import pytest
import torch

import bdia
from bdia import digits
from bdia.analytic import Gaussian, GaussianMixture
from bdia.solvers.reversible import differentiable_inputs

LINEAR = bdia.Schedule.from_config(dict(beta_schedule="linear", timestep_spacing="linspace"))

EXACT = {
    "bdia-1": lambda: bdia.BDIA(1.0),
    "bdia-0.7": lambda: bdia.BDIA(0.7),
    "bdia-0.3": lambda: bdia.BDIA(0.3),
    "obelm": lambda: bdia.BDIA("belm"),
    "bdia-heun": lambda: bdia.BDIA(0.9, forward="heun"),
    "edict": lambda: bdia.EDICT(0.93),
}


def _mixture(means):
    return GaussianMixture(means, 0.4, schedule=LINEAR)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _grads(run, mode, leaves):
    """d(loss)/d(leaves) with the loop differentiated by ``mode``; ``run(mode)`` returns the loss."""
    return torch.autograd.grad(run(mode), leaves)


@pytest.mark.parametrize("name", list(EXACT))
@pytest.mark.parametrize("direction", ["sample", "invert"])
def test_reversible_gradient_equals_autograd_on_a_mixture(name, direction):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, 4, generator=g, dtype=torch.float64).requires_grad_()
    start = torch.randn(2, 2, 4, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(2, 2, 4, generator=g, dtype=torch.float64)
    solver, grid, model = EXACT[name](), LINEAR.grid(12), _mixture(means)

    def loss(mode):
        if direction == "sample":
            return (weights * solver.sample(model, start, grid, backprop=mode) ** 2).sum()
        inv = solver.invert(model, start, grid, backprop=mode)
        return sum((weights * z**3).sum() for z in inv.latents)

    ref = _grads(loss, "autograd", [start, means])
    rev = _grads(loss, "reversible", [start, means])
    for a, b in zip(rev, ref):
        assert _rel(a, b) <= 1e-8


@pytest.fixture(scope="module")
def unet64():
    """The shipped digits UNet in float64, with its parameters trainable."""
    return copy.deepcopy(digits.load_model()).double().requires_grad_(True)


@pytest.mark.parametrize("gamma", [1.0, 0.8, 0.4])
def test_reversible_gradient_equals_autograd_on_the_digits_model(unet64, gamma, single_thread):
    """Through the latents, the network's weights, a guidance-scale tensor and a learned class embedding."""
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)  # a learned conditioning tensor
    labels, null = torch.tensor([3]), torch.tensor([unet64.null_label])

    def guided(x, t):  # classifier-free guidance closing over its scale and conditioning
        e_u, e_c = unet64(x, t, null), unet64(x + shift, t, labels)
        return e_u + scale * (e_c - e_u)

    weight = unet64.conv_in.weight
    assert {id(t) for t in (scale, shift, weight)} <= {id(t) for t in differentiable_inputs(guided)}
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.linspace(-1, 1, 256, dtype=torch.float64).reshape(1, 1, 16, 16)
    start = noise.clone().requires_grad_()

    def loss(mode):
        return ((bdia.BDIA(gamma).sample(guided, start, unet64.schedule.grid(6), backprop=mode) - target) ** 2).sum()

    ref = _grads(loss, "autograd", [start, scale, shift, weight])
    rev = _grads(loss, "reversible", [start, scale, shift, weight])
    for a, b in zip(rev, ref):
        assert _rel(a, b) <= 1e-8


def test_gradcheck_on_a_tiny_problem():
    mean = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    model = Gaussian(mean, 0.5, schedule=LINEAR)
    grid = LINEAR.grid(4)

    def f(noise, mu):
        model.mean = mu  # the analytic model reads its mean at call time
        return bdia.BDIA(0.6).sample(model, noise, grid, backprop="reversible", params=[mu])

    noise = torch.randn(2, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (noise, mean))


def test_backward_costs_one_evaluation_per_step_for_bdia():
    means = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inner = _mixture(means)
    calls = []

    def model(x, t):
        calls.append(torch.is_grad_enabled())
        return inner(x, t)

    noise = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    solution = bdia.BDIA(0.9).solve(model, noise, LINEAR.grid(10), backprop="reversible")
    forward = len(calls)
    assert forward == solution.nfe == 10
    solution.x.sum().backward()
    assert len(calls) - forward == 10 - bdia.BDIA.warmup  # the reconstruction's evaluation serves the VJP
    assert all(calls[forward:])


def _saved_bytes(mode, num_steps):
    """Bytes autograd keeps for the backward pass of a gradient through ``num_steps`` steps."""
    model = _mixture(torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    noise = torch.randn(8, 64, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = bdia.BDIA(1.0).sample(model, noise, LINEAR.grid(num_steps), backprop=mode)
    x.sum().backward()
    return total[0]


def test_reversible_memory_does_not_grow_with_steps():
    assert _saved_bytes("reversible", 40) == _saved_bytes("reversible", 5)
    assert _saved_bytes("autograd", 40) > 5 * _saved_bytes("autograd", 5)


def test_float32_state_gradient_drift_is_small_at_moderate_gamma(unet64, single_thread):
    """float32 state: reconstructed states carry the round-trip error into the gradient (measured in docs)."""
    unet = copy.deepcopy(unet64).float().requires_grad_(False)
    labels = torch.tensor([5])

    def model(x, t):
        return unet(x.float(), t, labels).to(x.dtype)

    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = unet.schedule.grid(10)
    grads = {}
    for key, mode, dtype in [
        ("ref", "autograd", torch.float64),
        ("f32", "reversible", torch.float32),
        ("f32-autograd", "autograd", torch.float32),
    ]:
        start = noise.clone().requires_grad_()
        x = bdia.BDIA(0.9, state_dtype=dtype).sample(model, start, grid, backprop=mode)
        grads[key] = torch.autograd.grad((x.double() ** 2).sum(), start)[0]
    # reversal in float32 is as good as autograd in float32, both within 1e-4 of the float64 gradient
    assert _rel(grads["f32"], grads["ref"]) <= 1e-4
    assert _rel(grads["f32"], grads["f32-autograd"]) <= 1e-4


def test_refusals():
    model = _mixture(torch.randn(3, 4, dtype=torch.float64))
    noise = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    grid = LINEAR.grid(5)
    with pytest.raises(ValueError, match="inverse step is exact"):
        bdia.DDIM().sample(model, noise, grid, backprop="reversible")
    with pytest.raises(ValueError, match="backprop must be one of"):
        bdia.BDIA().sample(model, noise, grid, backprop="checkpoint")
    with pytest.raises(ValueError, match="needs backprop='reversible'"):
        bdia.BDIA().sample(model, noise, grid, params=[noise])
    with pytest.raises(TypeError, match=r"params\[0\]"):
        bdia.BDIA().sample(model, noise, grid, backprop="reversible", params=["weights"])


def test_reversible_without_gradients_is_plain_sampling():
    model = _mixture(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = LINEAR.grid(8)
    assert torch.equal(
        bdia.BDIA(0.5).sample(model, noise, grid, backprop="reversible"), bdia.BDIA(0.5).sample(model, noise, grid)
    )


def test_optimize_moves_a_digit_toward_the_target_class(single_thread):
    """DOODL with BDIA: the first iterate regenerates x0 exactly; the loss then falls, identically under autograd."""
    from bdia.optimize import classifier_objective, optimize

    model, classifier = digits.load_model(), digits.load_classifier()
    test = digits.load_digits("test")
    x0 = digits.to_model(test.images[:1]).to(torch.float64)
    target = (int(test.labels[0]) + 1) % 10
    eps = digits.eps_model(model, 0, guidance=0.0)
    grid, solver = model.schedule.grid(4), bdia.BDIA(1.0)
    inv = solver.invert(eps, x0, grid)
    objective = classifier_objective(classifier, [target], reference=x0, proximity=1.0)
    seen = []
    rev = optimize(solver, eps, inv, grid, objective, iterations=3, lr=0.1, callback=lambda it, loss, x: seen.append(x))
    assert (seen[0] - x0).abs().max() <= 1e-12
    assert rev.losses[-1] < 0.5 * rev.losses[0]
    assert min(rev.losses) == pytest.approx(objective(rev.x).sum().item(), rel=1e-12)
    ref = optimize(solver, eps, inv, grid, objective, iterations=3, lr=0.1, backprop="autograd")
    assert rev.losses == pytest.approx(ref.losses, rel=1e-8)


def test_optimize_refusals():
    from bdia.optimize import classifier_objective, optimize

    classifier = digits.load_classifier()
    with pytest.raises(ValueError, match="reference image"):
        classifier_objective(classifier, [1], proximity=1.0)
    with pytest.raises(TypeError, match="must be an Inversion"):
        optimize(bdia.BDIA(), lambda x, t: x, torch.zeros(1, 2), LINEAR.grid(3), lambda x: x.sum())


def test_reversible_sampling_warns_where_reconstruction_amplifies_rounding():
    """The backward pass of sample() inverts: gamma = 0.5 over 40 steps in float32 loses the gradient, and says so."""
    model = _mixture(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    noise = torch.randn(2, 4, dtype=torch.float32, requires_grad=True)
    with pytest.warns(bdia.InversionPrecisionWarning):
        bdia.BDIA(0.5, state_dtype=torch.float32).sample(model, noise, LINEAR.grid(40), backprop="reversible")
    with pytest.raises(ValueError, match="gamma is 0"):
        bdia.BDIA([0.0, 1.0]).sample(model, noise, LINEAR.grid(3), backprop="reversible")


def test_bench_workload_quick_path(tmp_path, single_thread):
    import json

    from bdia.bench import reversible
    from bdia.bench.config import BenchConfig

    tiny = {
        "batch": 1,
        "grad_steps": (3, 5),
        "drift_steps": 4,
        "drift_gammas": (0.5,),
        "exact_steps": (3,),
        "exact_gammas": (0.1,),
        "exact_batch": 1,
        "arith_steps": 2,
        "arith_shapes": ((1, 1, 4, 4),),
    }
    results = reversible.run(BenchConfig.quick(extra={"reversible": tiny}), log=lambda line: None)
    json.dumps(results)
    assert results["bit_exact"]["3/0.1"]["bit_exact"]["differing_bits"] == 0
    assert results["float32_drift"]["0.5"]["bit_exact_reversible"] <= 1e-6
    text = reversible.section(results)
    assert "zero differing bits for every gamma and N: met" in text and "| 5 |" in text and "| 1x1x4x4 |" in text
    assert reversible.plots(results, tmp_path, overwrite=False) == ["reversible_memory.png"]
    assert (tmp_path / "reversible_memory.png").stat().st_size > 0


@pytest.mark.parametrize("base", ["midpoint", "rk4"])
def test_rex_gradient_by_reversal_equals_autograd(base):
    """Rex is another protocol solver with an exact inverse: reversal needs nothing of its own."""
    from bdia.analytic import GaussianMixture

    schedule = bdia.Schedule.from_config(
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
    )
    g = torch.Generator().manual_seed(0)
    model = GaussianMixture(torch.randn(3, 6, generator=g, dtype=torch.float64), 0.4, schedule=schedule)
    grid = schedule.grid(8)
    x = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    solver = bdia.Rex(base)
    plain = torch.autograd.grad(solver.sample(model, x, grid).pow(2).sum(), x)[0]
    reversed_ = torch.autograd.grad(solver.sample(model, x, grid, backprop="reversible").pow(2).sum(), x)[0]
    assert (plain - reversed_).abs().max() <= 1e-8 * plain.abs().max()
