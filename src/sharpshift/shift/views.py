"""The view generator of the shift-aware options: RSA's weak/aggressive pairs and Fourier views.

Registered with sharpshift.plugins.VIEW_WRAPPERS, so every method gets it without being edited: when
`rsa` or `fourier` is enabled, the method's ViewGenerator is replaced by a ShiftViews with the same recipe,
normalisation and seed.
"""
from __future__ import annotations

import torch

from sharpshift.data.views import ViewGenerator
from sharpshift import plugins
from sharpshift.errors import UserError
from sharpshift.config.shift import FourierConfig
from sharpshift.shift.fourier import fourier_augment
from sharpshift.shift.rsa import multi_stage_views


class ShiftViews(ViewGenerator):
    """Views in [0, 1] (RSA: [a1, a2, w1, w2], else the recipe's V views), then Fourier on the chosen views,
    then normalisation. All randomness comes from the one seeded generator."""

    def __init__(self, base: ViewGenerator, fourier: FourierConfig | None = None, rsa: bool = False,
                 gray_gamma: float = 0.0, gray_solarize_p: float = 0.0):
        super().__init__(base.params, base.mean.flatten().tolist(), base.std.flatten().tolist(), base.out_size,
                         seed=base.seed)
        self.fourier = fourier
        self.rsa = rsa
        self.gray = (gray_gamma, gray_solarize_p)  # RSA's one-channel aggressive ops

    @property
    def num_views(self) -> int:
        return len(self.params) * (2 if self.rsa else 1)

    def unit_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.rsa:
            return multi_stage_views(x, self.params, self.generator, self.out_size, *self.gray)
        return [self.augment_view(x, i) for i in range(len(self.params))]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = self.unit_views(self.to_unit(images))
        if self.fourier is not None:
            for i in self.fourier.views:
                views[i] = fourier_augment(views[i], self.fourier, self.generator)
        return [self.normalize(v) for v in views]


def shift_views(cfg, method, views: ViewGenerator) -> ViewGenerator | None:
    fourier = cfg.fourier if cfg.fourier.enabled else None
    if not (cfg.rsa.enabled or fourier):
        return None
    if cfg.rsa.enabled and len(views.params) != 2:
        raise UserError(f"rsa makes two weak and two aggressive views; set views.num_views=2 "
                        f"(got {len(views.params)})")
    out = ShiftViews(views, fourier, rsa=cfg.rsa.enabled, gray_gamma=cfg.rsa.gray_gamma,
                     gray_solarize_p=cfg.rsa.gray_solarize_p)
    if fourier and max(fourier.views, default=-1) >= out.num_views:
        raise UserError(f"fourier.views={list(fourier.views)} names a view that does not exist; this run makes "
                        f"{out.num_views} views (indices 0..{out.num_views - 1})")
    return out


plugins.VIEW_WRAPPERS.append(shift_views)
