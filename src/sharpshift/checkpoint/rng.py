"""Every RNG state of every process, as tensors and plain data, so a resumed run draws what the uninterrupted
run would have drawn."""
from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch

def _generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """Every submodule's own `generator` (the views' one, and any add-on's that follows the convention)."""
    found = {}
    for name, m in module.named_modules():
        g = getattr(m, "generator", None)
        if isinstance(g, torch.Generator):
            found[name or "."] = g
    return found


def capture_rng(module: Optional[torch.nn.Module]) -> dict:
    """This process's RNG states, as tensors and plain data (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
             "generators": {}}
    if module is not None:
        state["generators"] = {name: {"device": str(g.device), "state": g.get_state()}
                               for name, g in _generators(module).items()}
    return state


def restore_rng(state: dict, module: Optional[torch.nn.Module]) -> list[str]:
    """Set every RNG from `state`; return what could not be restored (a generator on another device)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    problems = []
    gens = _generators(module) if module is not None else {}
    for name, saved in state.get("generators", {}).items():
        g = gens.get(name)
        if g is None or str(g.device) != saved["device"]:
            problems.append(name)
            continue
        g.set_state(saved["state"])
    return problems


def _gather_objects(obj: Any) -> list:
    """One object from every process (a list of one without multiple processes)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
