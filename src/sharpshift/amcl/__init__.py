"""Adaptive Multi-head Contrastive Learning (Wang et al., ECCV 2024) for SimCLR, MoCo v2, Barlow Twins, SimSiam.

config: the `amcl` group; heads: C projection heads + the shared temperature network phi; losses: Eq. (2.1)-(2.3)
as pure fp32 functions; steps: the per-method training step; hooks: refuses unsupported combinations;
similarity: per-head positive/negative similarity histograms (`sharpshift diagnose amcl`).
Kept empty so that importing the config group does not import torch."""
