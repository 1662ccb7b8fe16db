#!/usr/bin/env bash
# Creates the benchmarks' own virtual environment: jax + this package + a CPU build of PyTorch and
# SpikingJelly, for side-by-side comparisons with the PyTorch SNN baselines. Kept apart from the
# project's environment so that torch never becomes a dependency of the package or its tests.
#
#   benchmarks/setup_torch_env.sh              creates/updates .venv-bench in the repository root
#   GE2MS_BENCH_VENV=/path benchmarks/setup_torch_env.sh
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu benchmarks/setup_torch_env.sh
#       (where no CPU wheel of torch is available locally: PyPI's default torch build carries CUDA)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GE2MS_BENCH_VENV:-$root/.venv-bench}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip

# torch first and alone, so that nothing else can pull a CUDA build in as a dependency.
torch_args=("torch==2.13.0")
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  torch_args+=(--index-url "$TORCH_INDEX_URL")
fi
"${pip[@]}" install --quiet "${torch_args[@]}"
"$venv/bin/python" - <<'PY'
import sys
import torch
if torch.version.cuda is not None:
  sys.exit(f"setup_torch_env.sh: got a CUDA build of torch ({torch.__version__}, CUDA {torch.version.cuda}); "
           "the benchmarks compare CPU kernels. Remove the venv and rerun with "
           "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.")
print(f"torch {torch.__version__} (CPU build)")
PY

# The package with its own dependencies (jax among them), then SpikingJelly without its
# dependencies (it would otherwise pull in a different torch) plus what it imports at load time
# (loguru; h5py for its model zoo) and matplotlib for the plots.
"${pip[@]}" install --quiet -e "$root[test]"
"${pip[@]}" install --quiet --no-deps "spikingjelly==2.0.0"
"${pip[@]}" install --quiet loguru h5py matplotlib

"$venv/bin/python" -c "
import jax, torch, spikingjelly, ge2ms_jax
from spikingjelly.activation_based import neuron
print('jax', jax.__version__, '| torch', torch.__version__, '| spikingjelly ok | ge2ms_jax', ge2ms_jax.__version__)
"
echo "benchmark environment ready: $venv"
