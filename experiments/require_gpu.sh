# Sourced at the top of the experiment scripts: stop at once, in one clear line, on a machine without a GPU
# (instead of "nvidia-smi: command not found" and a failed run per row). `require_gpu cpu-ok` lets TRAINER=cpu through.
require_gpu() {
  if command -v nvidia-smi > /dev/null 2>&1 && [ "$(nvidia-smi -L 2> /dev/null | grep -c '^GPU')" -gt 0 ]; then return 0; fi
  if [ "${1:-}" = cpu-ok ] && [ "${TRAINER:-gpu}" = cpu ]; then return 0; fi
  echo "$(basename "$0"): no GPU found (nvidia-smi lists none); these runs need one${1:+ (or TRAINER=cpu, slow)}." >&2
  exit 2
}
