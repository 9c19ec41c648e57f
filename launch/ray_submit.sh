#!/usr/bin/env bash
# Submit `emodifftalk rig` to a running Ray cluster as a Ray job.
#
#   launch/ray_submit.sh SHARDS OUT_DIR [--config tiny] [--identities a,b] [--overwrite] [section.key=value ...]
#
# RAY_ADDRESS: the cluster's dashboard (job server) address, default http://127.0.0.1:8265.
# The job's driver runs on the head node with RAY_ADDRESS set, so `emodifftalk rig` connects to
# the cluster instead of starting a local Ray; --working-dir ships this checkout to the job.
# SHARDS and OUT_DIR must be paths that every node sees (shared file system).
# If the cluster uses token authentication (Ray's default for new clusters in recent
# versions), the token is read from ~/.ray/auth_token or $RAY_AUTH_TOKEN as usual.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
cd "$(dirname "$0")/.."

exec ray job submit \
  --address "$ADDRESS" \
  --working-dir . \
  --runtime-env-json '{"excludes": [".venv", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "*.tar"]}' \
  -- emodifftalk rig "$@"
