"""Shift-aware views: Fourier amplitude augmentation (SSA-CLR), RSA weak/aggressive pairs, shift diagnostics.

Importing `sharpshift.shift.views` registers the view hook (done by sharpshift.addons)."""
