"""Adaptive Multi-head Contrastive Learning (Wang et al., ECCV 2024) for SimCLR, MoCo v2, Barlow Twins, SimSiam.

heads: C projection heads + the shared temperature network phi; losses: Eq. (2.1)-(2.3) as pure fp32 functions;
steps: the per-method objectives (registered with sharpshift.plugins, which also refuses other methods). The
`amcl` config group lives in sharpshift.config.amcl, the similarity histograms in
sharpshift.diagnostics.amcl_similarity (`sharpshift diagnose amcl`)."""
