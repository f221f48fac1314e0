"""Importing this module registers every add-on with sharpshift.plugins (sharpshift.plugins.load does it once).
One line per add-on module; the order is the order regularisers and view wrappers apply in."""
import sharpshift.shift.views  # noqa: F401  (Fourier and RSA views)
import sharpshift.shift.rsa  # noqa: F401  (RSA objectives for BYOL, SimCLR, MoCo)
import sharpshift.dsa.regulariser  # noqa: F401  (DSA: learned pair relations with outlier scores)
import sharpshift.sharpness.sam  # noqa: F401  (SAM/ASAM stepper)
import sharpshift.sharpness.trajectory  # noqa: F401  (SAF and MESA regularisers)
import sharpshift.amcl.heads  # noqa: F401  (AMCL: C heads and the temperature network)
import sharpshift.amcl.steps  # noqa: F401  (AMCL objectives for SimCLR, MoCo, SimSiam, Barlow Twins)
import sharpshift.amcl.mechanism  # noqa: F401  (AMCL's temperature check)
