"""Shift-aware views: Fourier amplitude augmentation (SSA-CLR) and RSA weak/aggressive pairs (the semantic-shift
diagnostic: sharpshift.diagnostics.semantic_shift).

Importing `sharpshift.shift.views` registers the view hook (done by sharpshift.addons)."""
