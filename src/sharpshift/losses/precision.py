"""Losses run in fp32 even inside bf16/fp16 autocast: normalisations, exp and log need the range."""
from __future__ import annotations

import functools

import torch


def fp32(fn):
    """Run `fn` with autocast off and every floating tensor argument cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def cast(a):
            return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        args = tuple(cast(a) for a in args)
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper
