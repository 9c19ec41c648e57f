"""Browser viewer and AU editor (``emodifftalk view``): a local viser server.

``state`` (edit logic, no browser), ``edit_worker`` (re-sampling in a thread), ``splats`` (rig frames →
splat arrays), ``source`` (what to show), ``app`` (the viser page). Importing this package does not
import viser; ``viewer.app`` does.
"""

from emodifftalk.viewer.state import Clip, ViewerState

__all__ = ["Clip", "ViewerState"]
