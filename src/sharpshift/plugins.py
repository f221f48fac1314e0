"""The one way in for add-ons: each add-on module registers what it changes here, at import.

- REGULARISERS: (cfg, method) -> nn.Module or None; forward(method, ctx, out) -> weighted loss terms
  (optionally after_step(method, ctx, out)). SAF, MESA, DSA.
- STEPPERS: (cfg, method) -> a stepper or None; the first that is not None wins, else plain_step. SAM.
- VIEW_WRAPPERS: (cfg, method, views) -> a ViewGenerator replacing the method's, or None. Fourier, RSA.
- OBJECTIVES: (add-on, method name) -> fn(method, ctx) -> StepOutput, replacing the method's own loss for
  that pair. AMCL, RSA. Supporting a new base method in an add-on is one registration in its folder.
- HEADS: add-on -> (cfg, make_head) -> the module that replaces one head (AMCL's C heads).
- MODULES: add-on -> (cfg) -> {attribute name: module}, built right after the heads (AMCL's phi).
- MECHANISMS: add-on -> sharpshift.mechanisms.Mechanism (probe, check): the figures that say whether its
  mechanism is on, recorded during training, summarised into mechanisms.json with a warning when it is off.
- An add-on with objectives supports exactly the methods it registered one for (REFUSALS says how to fix a
  run that asks for another); EXCLUSIVE says which add-ons exclude each other. Both are checked in one
  place (check_compatible) before anything is built.

A leaf: this module imports nothing of sharpshift but its error type, so add-ons, methods and the loop all
import it without cycles. The add-ons register when sharpshift.addons is imported, which the training loop
(sharpshift.methods.base) does once.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from sharpshift.errors import UserError

REGULARISERS: list[Callable[[Any, Any], nn.Module | None]] = []
STEPPERS: list[Callable[[Any, Any], Callable | None]] = []
VIEW_WRAPPERS: list[Callable[[Any, Any, Any], Any]] = []
OBJECTIVES: dict[tuple[str, str], Callable[[Any, Any], Any]] = {}
HEADS: dict[str, Callable[[Any, Callable[[], nn.Module]], nn.Module]] = {}
MODULES: dict[str, Callable[[Any], dict[str, nn.Module]]] = {}
MECHANISMS: dict[str, Any] = {}  # add-on -> sharpshift.mechanisms.Mechanism
REFUSALS: dict[str, str] = {}  # add-on -> how to fix a run whose method it has no objective for
EXCLUSIVE: list[tuple[str, str, str]] = []  # (add-on, add-on, the refusal)


def enabled(cfg, addon: str) -> bool:
    return bool(getattr(getattr(cfg, addon, None), "enabled", False))


def active(cfg, table) -> list[str]:
    """The enabled add-ons that have an entry in `table` (a dict keyed by add-on name)."""
    return [a for a in table if enabled(cfg, a)]


def check_compatible(cfg) -> None:
    """The support and exclusion rules, one UserError naming the fix."""
    method = cfg.method.name
    for addon, fix in REFUSALS.items():
        methods = supported_methods(addon)
        if enabled(cfg, addon) and method not in methods:
            raise UserError(f"{addon} supports {', '.join(methods)}, not {method!r}; {fix}")
    for a, b, message in EXCLUSIVE:
        if enabled(cfg, a) and enabled(cfg, b):
            raise UserError(message)


def supported_methods(addon: str) -> list[str]:
    return [name for a, name in OBJECTIVES if a == addon]


def objective(cfg, method_name: str) -> Callable[[Any, Any], Any] | None:
    """The enabled add-on's replacement of this method's loss, or None (the method's own compute_loss)."""
    for (addon, name), fn in OBJECTIVES.items():
        if name == method_name and enabled(cfg, addon):
            return fn
    return None


def head(cfg, make_head: Callable[[], nn.Module]) -> nn.Module:
    """One head of the method: its own (make_head()), or what an enabled add-on builds from it."""
    for addon in active(cfg, HEADS):
        return HEADS[addon](cfg, make_head)
    return make_head()


def modules(cfg) -> dict[str, nn.Module]:
    """Extra modules of the enabled add-ons, by the attribute name the method carries them under."""
    built: dict[str, nn.Module] = {}
    for addon in active(cfg, MODULES):
        built.update(MODULES[addon](cfg))
    return built


def regularisers(cfg, method) -> list[nn.Module]:
    return [r for r in (factory(cfg, method) for factory in REGULARISERS) if r is not None]


def stepper(cfg, method, default: Callable) -> Callable:
    for factory in STEPPERS:
        found = factory(cfg, method)
        if found is not None:
            return found
    return default


def wrap_views(cfg, method, views):
    for factory in VIEW_WRAPPERS:
        views = factory(cfg, method, views) or views
    return views
