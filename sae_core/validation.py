"""Checks shared by every SAE loader: each failure names the file and what is wrong."""
from __future__ import annotations

import torch

from .errors import SAEFileError


def require_keys(path, tensors: dict, keys, what: str = "tensor") -> None:
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise SAEFileError(path, f"missing {what}(s) {missing}; present: {sorted(tensors)[:20]}")


def check_tensor(path, name: str, tensor: torch.Tensor, shape: tuple[int, ...],
                 positive: bool = False) -> torch.Tensor:
    """Shape must be `shape`; every value finite (and > 0 when `positive`: a scale that inputs are
    divided by). Returns the tensor as float32."""
    if tuple(tensor.shape) != tuple(shape):
        raise SAEFileError(path, f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(shape)}")
    if tensor.is_floating_point():
        bad = ~torch.isfinite(tensor)
        if bad.any():
            raise SAEFileError(path, f"tensor {name!r} holds {int(bad.sum())} NaN/Inf value(s)")
    if positive and (tensor <= 0).any():
        raise SAEFileError(path, f"tensor {name!r} must be > 0 (inputs are divided by it), "
                                 f"found {tensor.flatten()[:4].tolist()}")
    return tensor.float()


def positive_int(path, cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SAEFileError(path, f"config field {key!r} must be a positive integer, got {value!r}")
    return value
