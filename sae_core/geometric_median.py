"""Geometric median (Weiszfeld) used to initialise the SAE's pre-bias."""
from __future__ import annotations

import torch

from .cpu_threads import thread_stable_sum


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances to the rows of `points` [N, d]."""
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"geometric_median needs a non-empty [N, d] tensor, got {list(points.shape)}")
    pts = points.double()
    median = pts.mean(0)
    for _ in range(max_iter):
        dist = (pts - median).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        new = (w[:, None] * pts).sum(0) / thread_stable_sum(w)   # same at any thread count
        shift = (new - median).norm()
        median = new
        if shift <= tol * (median.norm() + tol):
            break
    return median.to(points.dtype)
