#!/usr/bin/env bash
# Start `emodifftalk train` on THIS node of a multi-node job; run the same line on every node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 GPUS_PER_NODE=8 \
#     launch/multinode.sh motion --config paper --out /shared/runs/motion --resume latest
#
# NODE_RANK is 0 on the node whose address is MASTER_ADDR and 1..NNODES-1 elsewhere. The --out
# directory must be on a file system all nodes share (checkpoints are written by every rank).
# ACCELERATE_CONFIG picks the accelerate yaml (default launch/multinode.yaml = DDP; use
# launch/accelerate_zero2.yaml or launch/accelerate_zero3.yaml for DeepSpeed).
set -euo pipefail

: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (hostname/IP of node 0)}"
MASTER_PORT="${MASTER_PORT:-29500}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-$here/multinode.yaml}"

if [ "$#" -lt 1 ]; then
  echo "usage: $0 TASK [emodifftalk train options and section.key=value overrides]" >&2
  exit 2
fi

exec accelerate launch \
  --config_file "$ACCELERATE_CONFIG" \
  --num_machines "$NNODES" \
  --num_processes "$((NNODES * GPUS_PER_NODE))" \
  --machine_rank "$NODE_RANK" \
  --main_process_ip "$MASTER_ADDR" \
  --main_process_port "$MASTER_PORT" \
  ${EXTRA_LAUNCH_ARGS:-} \
  -m emodifftalk.cli train "$@"
