"""Importing this module registers every add-on (regularisers, steppers) with sharpshift.methods.hooks.
One line per add-on module."""
import sharpshift.shift.views  # noqa: F401,E402  (Fourier and RSA views)
import sharpshift.dsa.regulariser  # noqa: F401,E402  (DSA: learned pair relations with outlier scores)
import sharpshift.sharpness.sam  # noqa: F401,E402  (SAM/ASAM stepper)
import sharpshift.sharpness.trajectory  # noqa: F401,E402  (SAF and MESA regularisers)
import sharpshift.amcl.hooks  # noqa: F401,E402  (AMCL: refuses unsupported method combinations)
