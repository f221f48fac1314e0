"""Backbones as safetensors plus a small JSON of their architecture; rebuilt without unpickling anything."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sharpshift.errors import UserError
from sharpshift.models import build_backbone

WEIGHTS, ARCH = "backbone.safetensors", "backbone.json"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_backbone(backbone: torch.nn.Module, arch: dict, folder: Path) -> Path:
    """Write folder/backbone.safetensors and folder/backbone.json (arch + normalisation), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, folder / WEIGHTS)
    atomic_write_text(folder / ARCH, json.dumps(arch, indent=2))
    return folder / WEIGHTS


def load_backbone(path: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """Rebuild a pretrained backbone from a run folder or its backbone.safetensors (eval mode).

    The returned module maps normalised images (N, C, H, W) to features (N, D); its `.arch` dict holds
    the architecture and the `mean`/`std` used to normalise inputs."""
    p = Path(path)
    weights = p / WEIGHTS if p.is_dir() else p
    arch_file = weights.with_name(ARCH)
    if not weights.is_file() or not arch_file.is_file():
        raise UserError(f"no backbone at {path}: expected {WEIGHTS} and {ARCH}; pass a finished run folder")
    try:
        arch = json.loads(arch_file.read_text())
        model = build_backbone(arch["backbone"], arch["in_channels"], arch.get("width", 32), arch.get("cifar_stem", True))
        model.load_state_dict(load_file(str(weights), device=device))
    except (KeyError, ValueError, RuntimeError, OSError) as e:
        raise UserError(f"cannot load backbone from {weights}: {str(e).splitlines()[0]}; re-export it") from None
    model.arch = arch
    return model.to(device).eval()
