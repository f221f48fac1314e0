"""Diagnostics that make the papers' claims measurable, over a run folder or a built module: AMCL's per-head
similarities, the semantic shift of view recipes, sharpness (SAM-sharpness, Hessian, landscapes) and
discriminability. Above training: they may import train, evaluation and methods; nothing below imports them."""
