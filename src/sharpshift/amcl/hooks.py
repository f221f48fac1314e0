"""Refuses, when the module is built, the combinations AMCL does not support (registered as a regulariser
factory that never returns a regulariser: it is the hook every method calls with the config)."""
from __future__ import annotations

from sharpshift.amcl.config import AMCL_METHODS
from sharpshift.errors import UserError
from sharpshift.methods.hooks import REGULARISERS


def check_amcl_supported(cfg, method) -> None:
    if not cfg.amcl.enabled:
        return None
    if method.name not in AMCL_METHODS:
        raise UserError(f"amcl supports {', '.join(AMCL_METHODS)}, not {method.name}; "
                        f"set amcl.enabled=false or method.name to one of those")
    rsa = getattr(cfg, "rsa", None)
    if rsa is not None and rsa.enabled:
        raise UserError("amcl and rsa cannot be combined yet; set amcl.enabled=false or rsa.enabled=false")
    return None


REGULARISERS.append(check_amcl_supported)
