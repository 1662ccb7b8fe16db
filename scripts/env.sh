# Sourced by the other scripts: creates (once) and activates the project's virtual environment.
# Override the location with GE2MS_VENV=/path/to/venv and the interpreter with GE2MS_PYTHON=python3.12.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${GE2MS_VENV:-$_root/.venv}"
_stamp="$_venv/.ge2ms-installed"
if [ ! -x "$_venv/bin/python" ]; then
  "${GE2MS_PYTHON:-python3}" -m venv "$_venv"
fi
# Reinstall when setup.cfg changed since the last install.
if [ ! -f "$_stamp" ] || [ "$_root/setup.cfg" -nt "$_stamp" ]; then
  "$_venv/bin/python" -m pip install --quiet --upgrade pip
  "$_venv/bin/python" -m pip install --quiet -e "$_root[test]"
  touch "$_stamp"
fi
# shellcheck disable=SC1091
source "$_venv/bin/activate"
cd "$_root"
