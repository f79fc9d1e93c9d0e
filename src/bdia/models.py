"""The model contract and the adapters that bring other conventions to it.

Canonical contract (every sampler uses only this): ``eps_model(x, t) -> eps`` with ``x`` of shape
(B, ...), ``t`` of shape (B,) holding the grid's model times (training timesteps for discrete VP
models), and ``eps`` the noise prediction with the shape of ``x``. Adapters convert v- and
x0-prediction (docs/math.md section 1) and add classifier-free guidance; they live here, at the edge,
and the samplers never see the difference.

A model may declare the dtype it wants its input in with a ``dtype`` attribute (an ``nn.Module``
is asked for its parameters' dtype); adapters forward that declaration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from .schedule import Schedule, t_to_sigma

__all__ = ["EpsModel", "ClassifierFreeGuidance", "to_eps", "model_dtype"]


class EpsModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def model_dtype(model: Any) -> torch.dtype | None:
    """The dtype ``model`` wants its input in, or None when it does not say."""
    dt = getattr(model, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


class _Adapter:
    """Base for wrappers: forwards the wrapped model's dtype declaration."""

    model: Any

    @property
    def dtype(self) -> torch.dtype | None:
        return model_dtype(self.model)


class _PredictionToEps(_Adapter):
    def __init__(self, model: Callable, schedule: Schedule, prediction_type: str):
        self.model = model
        self.prediction_type = prediction_type
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(x, t, *args, **kwargs)
        # alpha and sigma at the model time itself, fractional or not (Karras grids, solver stages):
        # lambda = t_to_sigma(t), as grids and analytic models read a fractional t (docs/math.md section 1)
        lam = t_to_sigma(self.schedule, torch.as_tensor(t).detach().to(torch.float64).cpu())
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha64 = 1.0 / torch.sqrt(1.0 + lam**2)
        alpha = alpha64.reshape(shape).to(device=x.device, dtype=x.dtype)
        sigma = (lam * alpha64).reshape(shape).to(device=x.device, dtype=x.dtype)
        if self.prediction_type == "v_prediction":
            return alpha * out + sigma * x
        return (x - alpha * out) / sigma  # "sample": x0-prediction

    def __repr__(self) -> str:
        return f"to_eps({self.model!r}, prediction_type={self.prediction_type!r})"


def to_eps(model: Callable, schedule: Schedule, prediction_type: str | None = None) -> Callable:
    """Wrap a v- or x0-predicting model of a discrete VP schedule into the eps contract.

    ``prediction_type`` is diffusers' name ("epsilon", "v_prediction", "sample") and defaults to the
    schedule's. Extra positional/keyword arguments (a condition) are passed through, so the result
    composes with :class:`ClassifierFreeGuidance`. "epsilon" returns ``model`` unchanged.
    """
    kind = prediction_type or schedule.prediction_type
    if kind == "epsilon":
        return model
    if kind not in ("v_prediction", "sample"):
        raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {kind!r}")
    return _PredictionToEps(model, schedule, kind)


def _batch_size(cond: Any) -> int | None:
    if isinstance(cond, torch.Tensor):
        return cond.shape[0] if cond.dim() > 0 else None
    if isinstance(cond, Mapping):
        sizes = [_batch_size(v) for v in cond.values()]
        return next((s for s in sizes if s is not None), None)
    return None


def _expand(cond: Any, batch: int) -> Any:
    """Broadcast a condition with batch 1 (or a scalar label) to ``batch``."""
    if isinstance(cond, torch.Tensor):
        if cond.dim() == 0:
            return cond.expand(batch)
        if cond.shape[0] == 1 and batch != 1:
            return cond.expand(batch, *cond.shape[1:])
        if cond.shape[0] != batch:
            raise ValueError(f"condition has batch size {cond.shape[0]} but the input has {batch}; use 1 or {batch}")
        return cond
    if isinstance(cond, Mapping):
        return {k: _expand(v, batch) for k, v in cond.items()}
    return cond


def _cat(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, Mapping):
        if a.keys() != b.keys():
            raise ValueError(f"cond and uncond have different keys: {sorted(a)} vs {sorted(b)}")
        return {k: _cat(a[k], b[k]) for k in a}
    if a != b:
        raise ValueError("cond and uncond differ in a non-tensor entry; they cannot be batched together")
    return a


class ClassifierFreeGuidance(_Adapter):
    """Classifier-free guidance (Ho & Salimans 2022) as an eps model: ``e_u + scale * (e_c - e_u)``.

    ``model(x, t, cond)`` predicts eps (wrap with :func:`to_eps` first for v/x0 models); ``cond`` and
    ``uncond`` are tensors (class labels, text embeddings) or dicts of tensors (SDXL's added
    conditioning), with batch size 1 or that of ``x``. The two branches run as one batch unless
    ``batched=False``. The same instance serves inversion and generation, which is what keeps BDIA's
    and EDICT's round trip exact; a second instance with another ``cond`` is an edit.
    """

    def __init__(self, model: Callable, cond: Any, uncond: Any, scale: float, batched: bool = True):
        if not isinstance(scale, (int, float)) or not torch.isfinite(torch.tensor(float(scale))):
            raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
        self.model, self.cond, self.uncond = model, cond, uncond
        self.scale, self.batched = float(scale), batched

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cond, uncond = _expand(self.cond, b), _expand(self.uncond, b)
        if self.scale == 1.0:
            return self.model(x, t, cond)
        if self.scale == 0.0:
            return self.model(x, t, uncond)
        if self.batched:
            e_u, e_c = self.model(torch.cat([x, x]), torch.cat([t, t]), _cat(uncond, cond)).chunk(2)
        else:
            e_u, e_c = self.model(x, t, uncond), self.model(x, t, cond)
        return e_u + self.scale * (e_c - e_u)

    def with_cond(self, cond: Any, scale: float | None = None) -> ClassifierFreeGuidance:
        """The same guided model under another condition (and optionally scale): an edit."""
        return ClassifierFreeGuidance(
            self.model, cond, self.uncond, self.scale if scale is None else scale, self.batched
        )

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance({self.model!r}, scale={self.scale})"
