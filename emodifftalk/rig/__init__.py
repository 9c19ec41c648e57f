"""Canonical Gaussian rig G0 per identity (paper supp. §1): container, animation, reconstruction.

Light imports only here; ``reconstruct`` (needs the renderer) is imported where used.
"""

from emodifftalk.rig.deform import deform
from emodifftalk.rig.gaussians import GaussianRig, Gaussians, is_complete

__all__ = ["GaussianRig", "Gaussians", "deform", "is_complete"]
