"""Where add-ons plug into the loop. Each add-on module appends a factory; a factory returns None when
its config group is off. Add-on modules are imported in `sharpshift.addons`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

if TYPE_CHECKING:
    from sharpshift.config import Config
    from sharpshift.data.views import ViewGenerator
    from sharpshift.methods.base import SSLMethod, Stepper

# (cfg, method) -> nn.Module with forward(method, ctx, out) -> dict of weighted terms (optionally after_step)
REGULARISERS: list[Callable[["Config", "SSLMethod"], nn.Module | None]] = []
# (cfg, method) -> a stepper; the first that is not None wins, else the plain step
STEPPERS: list[Callable[["Config", "SSLMethod"], "Stepper | None"]] = []
# (cfg, method, views) -> a ViewGenerator replacing the method's (Fourier, RSA), or None; applied in order
VIEW_WRAPPERS: list[Callable[["Config", "SSLMethod", "ViewGenerator"], "ViewGenerator | None"]] = []


def build_regularisers(cfg: "Config", method: "SSLMethod") -> list[nn.Module]:
    import sharpshift.addons  # noqa: F401  (registers the add-ons)

    return [r for r in (factory(cfg, method) for factory in REGULARISERS) if r is not None]


def build_stepper(cfg: "Config", method: "SSLMethod") -> "Stepper":
    import sharpshift.addons  # noqa: F401
    from sharpshift.methods.base import plain_step

    for factory in STEPPERS:
        stepper = factory(cfg, method)
        if stepper is not None:
            return stepper
    return plain_step


def wrap_views(cfg: "Config", method: "SSLMethod", views: "ViewGenerator") -> "ViewGenerator":
    import sharpshift.addons  # noqa: F401

    for factory in VIEW_WRAPPERS:
        views = factory(cfg, method, views) or views
    return views
