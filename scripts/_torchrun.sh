# Sourced by the multi-GPU launch scripts (not run on its own).
# torchrun_train ARGS...: `qwenvl_ft train ARGS...` under torchrun on this node's GPUs, with the
# standard rendezvous variables: NPROC_PER_NODE (default: the CUDA_VISIBLE_DEVICES entries, else
# the GPUs `nvidia-smi -L` lists), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500).
torchrun_train() {
  if [[ -z ${NPROC_PER_NODE:-} ]]; then
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
      NPROC_PER_NODE=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)
    else
      NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || true
    fi
  fi
  if [[ ${NPROC_PER_NODE:-0} -lt 1 ]]; then
    echo "$(basename "$0"): no GPU found (nvidia-smi); set NPROC_PER_NODE" >&2
    exit 1
  fi
  exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    --nproc_per_node "$NPROC_PER_NODE" \
    -m qwenvl_ft train "$@"
}
