"""WebDataset shards: the one import path for packing, reading, collating and validating.

The implementation is split by concern: ``shard_writer`` (pack + manifest), ``shard_reader``
(safe decoders, skip accounting, streams), ``collate`` (crops + padding), ``shard_inspect``
(validation + report). Decoded sample formats (all arrays numpy):

* seq: ``{"key", "kind": "seq", "audio" (N,) f32, "sample_rate", "aus" (T,17) f32,
  "au_mask" (T,17) bool, "verts" (T,V,3) f32 | None, "feats" (Ta,D) f32 | None,
  "feats_meta" dict | None, "meta"}``
* frames: ``{"key", "kind": "frames", "images" {camera: (H,W,3) uint8}, "cameras" [{"name",
  "K" (3,3) f32, "viewmat" (4,4) f32, "width", "height"}], "verts" (V,3) f32 | None, "meta"}``
* template: ``{"key", "kind": "template", "verts" (V,3) f32, "faces" (F,3) int32,
  "vertex_sets" {name: int64 indices}, "meta"}``
"""

from emodifftalk.data.collate import collate_sequences, crop_sequence
from emodifftalk.data.shard_inspect import (
    Problem,
    format_report,
    inspect_report,
    validate_shards,
    verify_shard_checksums,
)
from emodifftalk.data.shard_reader import (
    DECODERS,
    SampleError,
    ShardStream,
    SkipStats,
    check_shard_folder,
    decode_sample,
    identity_shard_urls,
    iter_dataset,
    load_manifest,
    load_templates,
    shard_urls,
    stream_samples,
)
from emodifftalk.data.shard_writer import MANIFEST, ShardSetWriter, pack_dataset

__all__ = [
    "DECODERS", "MANIFEST", "Problem", "SampleError", "ShardSetWriter", "ShardStream", "SkipStats",
    "check_shard_folder", "collate_sequences", "crop_sequence", "decode_sample", "format_report",
    "identity_shard_urls", "inspect_report",
    "iter_dataset", "load_manifest", "load_templates", "pack_dataset", "shard_urls", "stream_samples",
    "validate_shards", "verify_shard_checksums",
]
