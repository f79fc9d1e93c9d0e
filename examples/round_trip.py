"""Invert samples of an analytic Gaussian mixture with each method and regenerate them."""

import torch

import bdia
from bdia.analytic import GaussianMixture

# Stable Diffusion's scheduler config; any diffusers scheduler config (dict or JSON path) works.
schedule = bdia.Schedule.from_config(
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "set_alpha_to_one": False,
    }
)
grid = schedule.grid(50)

# A model whose eps is known exactly: a mixture of 4 Gaussians in a 3x4x4 space.
g = torch.Generator().manual_seed(0)
eps_model = GaussianMixture(torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64), 0.5, schedule=schedule)
x0 = eps_model.sample_data(8, g)

solvers = [bdia.DDIM(), bdia.EDICT(p=0.93), bdia.BDIA(gamma=1.0), bdia.BDIA(gamma=0.96), bdia.BDIA(gamma="belm")]
width = max(len(repr(s)) for s in solvers)  # the columns stay aligned whatever the reprs say
for solver in solvers:
    inv = solver.invert(eps_model, x0, grid)
    x0_again = solver.sample(eps_model, inv, grid)
    err = (x0_again - x0).abs().max().item()
    print(f"{solver!r:{width}}  NFE {inv.nfe:3d}  round-trip max error {err:.1e}")
