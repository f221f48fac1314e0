"""The `dsa` config group: Dynamic Semantic Adjuster (Song et al., arXiv 2407.13541). Off by default.

Defaults are the official code's (ZeenSong/DSA cfg.py); keys marked "ours" are choices the paper and code
leave open, documented in docs/dsa.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sharpshift.errors import UserError

PRIORS = ("checkpoint", "ema", "random")
PAIR_NORMS = ("l1", "none")
FORMS = ("working", "official", "uniform")


@dataclass
class DSAConfig:
    enabled: bool = False
    # working (ours, the default): relations in [0, 1] from L2-normalised pair differences, trained toward the prior
    # by L_reg and used as fixed weights in L_w, so they attract as well as repel; official: the released
    # construction (L1 over the N^2 pairs, rows summing to one), which converges to M = 1/N (docs/dsa.md);
    # uniform: the control, M = 1/N and s = 1 fixed (no adjuster, no prior): what L_w does with no relations
    form: str = "working"
    cross_view: bool = True  # M^01 from h^0_i - h^1_j (ours); false: from h^0_i - h^0_j, as the official code
    adjuster_lr: float = 3e-3  # the adjuster's own Adam (the official optimiser: Adam 3e-3, weight decay 1e-6)
    adjuster_weight_decay: float = 1e-6
    weight: float = 1.0  # lambda1, on the weighted aggregation/separation loss L_w
    reg_weight: float = 0.01  # lambda2, on the relation regulariser L_reg
    temperature: float = 0.5  # T in L_w
    prior_tau: float = 0.5  # tau_c in M_pro = exp(-||u_i - u_j|| / tau_c)
    neighbours: int = 20  # eta: nearest neighbours in the prior space
    good_threshold: int = 1  # mu: j is a good neighbour of i when more than mu of j's neighbours have i as neighbour
    prior: str = "checkpoint"  # checkpoint (an earlier run, prior_path), ema (the method's momentum encoder), random
    prior_path: Optional[str] = None  # run folder (or backbone.safetensors) for prior=checkpoint
    prior_seed: int = 1234  # prior=random: seed of the frozen random network (ours)
    hidden_dim: int = 64  # adjuster MLP width; the official code uses emb=64 (ours: fixed, not the projector width)
    pair_norm: str = "l1"  # official form: l1 (each feature of the N^2 pair differences / its L1 norm) or none
    chunk_mb: float = 64.0  # memory of one chunk of the N x N x hidden pair activations (ours)
    cache_originals: bool = True  # frozen priors: reuse the prior features of each un-augmented image (ours)

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        need(self.form in FORMS, f"unknown dsa.form {self.form!r}; use working (ours, the default), official or uniform "
             "(the control)")
        need(self.adjuster_lr > 0 and self.adjuster_weight_decay >= 0,
             "dsa.adjuster_lr must be > 0 and dsa.adjuster_weight_decay >= 0")
        need(self.prior in PRIORS, f"unknown dsa.prior {self.prior!r}; use one of {', '.join(PRIORS)}")
        need(self.pair_norm in PAIR_NORMS, f"unknown dsa.pair_norm {self.pair_norm!r}; use l1 or none")
        need(self.weight >= 0 and self.reg_weight >= 0, "dsa.weight and dsa.reg_weight must be >= 0")
        need(self.temperature > 0 and self.prior_tau > 0, "dsa.temperature and dsa.prior_tau must be > 0")
        need(self.neighbours >= 1, f"dsa.neighbours must be >= 1, got {self.neighbours}")
        need(0 <= self.good_threshold < self.neighbours,
             f"dsa.good_threshold must be in [0, dsa.neighbours), got {self.good_threshold}")
        need(self.hidden_dim >= 1, f"dsa.hidden_dim must be >= 1, got {self.hidden_dim}")
        need(self.chunk_mb > 0, f"dsa.chunk_mb must be > 0, got {self.chunk_mb}")
        need(not (self.enabled and self.prior == "checkpoint" and not self.prior_path),
             "dsa.prior=checkpoint needs dsa.prior_path=RUN_DIR (e.g. a short SimCLR run); "
             "or set dsa.prior=ema or dsa.prior=random")
