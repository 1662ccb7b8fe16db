"""The package's import structure: the module map's layers (import-linter) and no import cycle."""

import os
import shutil
import subprocess
import sys

import grimp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint(root: str, package_parent: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=package_parent)
  return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                         f"sys.exit(lint_imports(config_filename={os.path.join(root, 'setup.cfg')!r}, "
                         "no_cache=True, no_logo=True))"],
                        cwd=package_parent, env=env, capture_output=True, text=True)


def test_the_module_layers_of_setup_cfg_are_kept():
  out = _lint(ROOT, ROOT)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "1 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
  """The contract is not vacuous: `loading` importing `train` (the cycle it once had) is caught."""
  shutil.copytree(os.path.join(ROOT, "ge2ms_jax"), tmp_path / "ge2ms_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "embedded"))
  shutil.copy(os.path.join(ROOT, "setup.cfg"), tmp_path / "setup.cfg")
  loading = tmp_path / "ge2ms_jax" / "loading.py"
  loading.write_text(loading.read_text() + "\n\ndef _late():\n  from ge2ms_jax import train\n  return train\n")
  out = _lint(str(tmp_path), str(tmp_path))
  assert out.returncode != 0
  assert "ge2ms_jax.loading -> ge2ms_jax.train" in out.stdout, out.stdout


def test_no_import_cycle_anywhere_in_the_package():
  graph = grimp.build_graph("ge2ms_jax")
  cycles = []
  for importer in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(importer)):
      chain = graph.find_shortest_chain(importer=imported, imported=importer)
      if chain:
        cycles.append(" -> ".join((importer,) + tuple(chain)))
  assert not cycles, "\n".join(cycles)
