"""Gaussian rendering: differentiable rasterizer (gsplat on CUDA, pure-torch tiles anywhere),
camera helpers and video/image output."""

from emodifftalk.render.cameras import (
    c2w_to_viewmat,
    intrinsics,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_cameras,
    project_points,
    viewmat_to_c2w,
)
from emodifftalk.render.rasterize import RenderOutput, rasterize
from emodifftalk.render.video import frame_grid, save_png, write_video

__all__ = [
    "RenderOutput",
    "c2w_to_viewmat",
    "frame_grid",
    "intrinsics",
    "look_at",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "orbit_cameras",
    "project_points",
    "rasterize",
    "save_png",
    "viewmat_to_c2w",
    "write_video",
]
