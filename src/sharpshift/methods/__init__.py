"""The base methods by name."""
from __future__ import annotations

from sharpshift.config import METHOD_DEFAULTS
from sharpshift.methods.barlow import BarlowTwins
from sharpshift.methods.base import SSLMethod
from sharpshift.methods.byol import BYOL
from sharpshift.methods.moco import MoCo
from sharpshift.methods.simclr import SimCLR
from sharpshift.methods.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {m.name: m for m in (SimCLR, MoCo, BYOL, BarlowTwins, SimSiam)}


def register_method(cls: type[SSLMethod], defaults: dict | None = None) -> type[SSLMethod]:
    """Add a base method: its class here, its defaults (for MethodConfig fields left empty) in the config layer.
    Every add-on without an objective of its own (SAM, SAF, MESA, Fourier, DSA) then works with it."""
    METHODS[cls.name] = cls
    METHOD_DEFAULTS[cls.name] = dict(defaults or {})
    return cls
