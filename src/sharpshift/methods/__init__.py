"""The base methods by name."""
from __future__ import annotations

from sharpshift.methods.barlow import BarlowTwins
from sharpshift.methods.base import SSLMethod
from sharpshift.methods.byol import BYOL
from sharpshift.methods.moco import MoCo
from sharpshift.methods.simclr import SimCLR
from sharpshift.methods.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {m.name: m for m in (SimCLR, MoCo, BYOL, BarlowTwins, SimSiam)}


def resolve_method_defaults(cfg) -> None:
    """Fill method fields left empty with the chosen method's own defaults (saved resolved in the run)."""
    for key, value in METHODS[cfg.method.name].defaults.items():
        if getattr(cfg.method, key) is None:
            setattr(cfg.method, key, value)
