"""Pure loss functions, one module per model family (equation numbers in the docstrings).

* ``speech``   — Speech-to-AU, eq. 9–11
* ``geometry`` — AU-prompt diffusion, eq. 12–17
* ``feature_line`` — feature-line opacity, eq. 19–22
"""

from emodifftalk.losses.feature_line import (
    distance_loss,
    feature_line_regularizer,
    feature_line_step_losses,
    opacity_motion_loss,
    reconstruction_loss,
)
from emodifftalk.losses.geometry import (
    acceleration_loss,
    deformation_loss,
    geometry_loss,
    laplacian_coordinates,
    laplacian_matrix,
    lip_loss,
    mesh_edges,
    motion_loss,
    velocity_loss,
    vertex_loss,
    vertex_mask_from_indices,
)
from emodifftalk.losses.speech import (
    au_regression_loss,
    au_temporal_loss,
    speech_to_au_loss,
)

__all__ = [
    "acceleration_loss", "au_regression_loss", "au_temporal_loss", "deformation_loss", "distance_loss",
    "feature_line_regularizer", "feature_line_step_losses", "geometry_loss", "laplacian_coordinates",
    "laplacian_matrix", "lip_loss", "mesh_edges", "motion_loss", "opacity_motion_loss",
    "reconstruction_loss", "speech_to_au_loss", "velocity_loss", "vertex_loss", "vertex_mask_from_indices",
]
