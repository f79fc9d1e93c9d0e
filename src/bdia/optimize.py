"""Edit an inverted sample by gradient descent on its latents: DOODL (Wallace et al., ICCV 2023) with BDIA.

Invert x0 exactly, then minimise ``objective(sample(latents))`` over the latents, each gradient taken
through the whole sampling loop by reversal (``backprop="reversible"``, docs/math.md section 11): memory
independent of the number of steps, and with BDIA one network evaluation per step where DOODL's
EDICT pays two. Because the inversion is exact, the first iterate regenerates x0 itself, so the edit
starts from the real image rather than from an approximation of it::

    inv = bdia.BDIA().invert(eps, x0, grid)
    objective = bdia.optimize.classifier_objective(classifier, target=[7], reference=x0, proximity=1.0)
    result = bdia.optimize.optimize(bdia.BDIA(), eps, inv, grid, objective, iterations=20)
    result.x  # the edited images

The variable is one offset added to every latent of the state (BDIA's pair z_0, z_1; EDICT's two
chains): moving the latents together keeps the coupled state consistent, where moving EDICT's chains
apart makes its mixing diverge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .schedule import Grid
from .solvers import Inversion, Solver

__all__ = ["OptimizeResult", "classifier_objective", "optimize"]

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class OptimizeResult:
    """The edited samples, the latents that produce them, and what the optimisation cost."""

    x: torch.Tensor
    inversion: Inversion
    losses: list[float]  # objective per iteration (before that iteration's update)
    nfe: int  # model evaluations of the forward passes (the backward passes add about as many for BDIA)
    seconds: float


def classifier_objective(
    classifier: torch.nn.Module,
    target: int | Sequence[int] | torch.Tensor,
    reference: torch.Tensor | None = None,
    proximity: float = 0.0,
) -> Objective:
    """Per-sample loss ``-log p(target | x) + proximity * mean((x - reference)^2)``.

    ``classifier(x)`` returns logits; x is passed in the classifier's parameter dtype. The proximity
    term keeps the edit near ``reference`` (the inverted image); 0 leaves only the class term.
    """
    if proximity < 0:
        raise ValueError(f"proximity must be >= 0, got {proximity}")
    if proximity > 0 and reference is None:
        raise ValueError("proximity > 0 needs the reference image it keeps the edit close to")
    dtype = next(classifier.parameters()).dtype
    labels = torch.as_tensor(target, dtype=torch.long).reshape(-1)

    def objective(x: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(classifier(x.to(dtype)), dim=1)
        loss = -logp.gather(1, labels.to(x.device).expand(x.shape[0])[:, None])[:, 0].to(x.dtype)
        if proximity > 0 and reference is not None:  # (proximity > 0 without a reference is refused above)
            loss = loss + proximity * (x - reference.to(x)).flatten(1).pow(2).mean(1)
        return loss

    return objective


def optimize(
    solver: Solver,
    model: Callable,
    start: Inversion,
    grid: Grid,
    objective: Objective,
    *,
    iterations: int = 20,
    lr: float = 0.05,
    backprop: str = "reversible",
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> OptimizeResult:
    """Minimise ``objective(solver.sample(model, latents + delta, grid)).sum()`` over one offset ``delta`` with Adam.

    ``backprop="autograd"`` gives the same gradients while storing every step (for comparison).
    ``callback(iteration, loss, x)`` sees each iterate. Returns the best iterate (lowest loss).
    """
    if not isinstance(start, Inversion):
        raise TypeError(f"start must be an Inversion (from solver.invert), got {type(start).__name__}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    delta = torch.zeros_like(start.latents[0], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    losses: list[float] = []
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    nfe, t0 = 0, time.perf_counter()
    for it in range(iterations + 1):
        latents = tuple(z.detach() + delta for z in start.latents)
        solution = solver.solve(model, replace(start, latents=latents), grid, backprop=backprop)
        nfe += solution.nfe
        loss = objective(solution.x).sum()
        losses.append(loss.item())
        if callback is not None:
            callback(it, losses[-1], solution.x.detach())
        if best is None or losses[-1] < best[0]:
            best = (losses[-1], solution.x.detach(), delta.detach().clone())
        if it == iterations:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert best is not None  # the first iteration sets it
    _, x, best_delta = best
    latents = tuple(z.detach() + best_delta for z in start.latents)
    return OptimizeResult(x, replace(start, latents=latents), losses, nfe, time.perf_counter() - t0)
