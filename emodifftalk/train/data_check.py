"""Checks of a training task's shard folder, run before the run folder or any model exists.

``check_training_shards`` is what the ``s2au`` and ``motion`` tasks' ``check_data`` hooks call:
the folder and its manifest (the same checker ``inspect``, ``rig`` and ``eval`` use), shards of
the kinds/splits the task reads, and — with ``data.verify_checksums`` — every one of those shards
hashed against the manifest's sha256, so a damaged shard stops the run up front instead of
silently shrinking the training set. Shards packed without checksums cannot be verified: they
are named in a warning, and corrupt samples met while training count against
``data.max_skip_fraction`` (``loop.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from emodifftalk.config import Config
from emodifftalk.data.shards import check_shard_folder, verify_shard_checksums

log = logging.getLogger(__name__)


def check_training_shards(cfg: Config, task_name: str, need: Iterable[tuple[str, str | None]]) -> None:
    root = cfg.data.root
    if not root:
        raise ValueError(f"the {task_name} task needs packed shards: pass --data SHARDS "
                         "(or the override data.root=SHARDS)")
    need = list(need)
    check_shard_folder(root, need)
    if not cfg.data.verify_checksums:
        log.info("data.verify_checksums=false: shard checksums not verified")
        return
    problems, unverifiable = [], []
    for kind, split in need:
        p, u = verify_shard_checksums(root, kind, split)
        problems += p
        unverifiable += u
    if problems:
        raise ValueError(f"{root}: {len(problems)} shard(s) the {task_name} task reads fail the manifest's "
                         f"checksums: " + "; ".join(str(p) for p in problems) + ". Re-pack (`emodifftalk pack`) "
                         "or restore them (data.verify_checksums=false trains on what is readable)")
    if unverifiable:
        log.warning("%s: %d shard(s) have no sha256 in the manifest (packed by an older version) and cannot be "
                    "verified: %s; corrupt samples in them are skipped, counted and limited by "
                    "data.max_skip_fraction", root, len(unverifiable), ", ".join(unverifiable))
