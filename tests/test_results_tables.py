"""The documentation's results tables are what the result files give (`scripts/render_results.py`).

Every table between `<!-- table:NAME -->` markers in README.md, benchmarks/README.md and docs/*.md must
equal its rendering from `checkpoints/*/report/report.json` and `benchmarks/results/*.json`; a changed
number in a copy of the README is caught, and named; relative links between the documents resolve.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from ge2ms_jax import results_tables

ROOT = Path(__file__).resolve().parents[1]


def _script():
  spec = importlib.util.spec_from_file_location("render_results", ROOT / "scripts" / "render_results.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _copy_sources(root: Path) -> None:
  """The result files every table reads, copied under `root`."""
  for model in results_tables.MODELS:
    (root / model.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / model.path, root / model.path)
  (root / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
  for path in (ROOT / "benchmarks" / "results").glob("*.json"):
    shutil.copy(path, root / "benchmarks" / "results" / path.name)


def test_committed_tables_match_the_result_files():
  messages = results_tables.differences(ROOT)
  assert not messages, "\n\n".join(messages) + "\n\nrun: python scripts/render_results.py"


def test_every_table_is_in_a_document():
  placed = {name for path in results_tables.documents(ROOT) for name in results_tables.tables_in(path.read_text())}
  assert placed == set(results_tables.TABLES)
  assert {"results", "benchmarks"} <= set(results_tables.tables_in((ROOT / "README.md").read_text()) +
                                          results_tables.tables_in((ROOT / "benchmarks" / "README.md").read_text()))


def test_check_fails_and_names_the_table_when_a_number_changes(tmp_path, capsys):
  _copy_sources(tmp_path)
  readme = (ROOT / "README.md").read_text()
  number = "**93.07%**"
  assert number in readme
  (tmp_path / "README.md").write_text(readme.replace(number, "**93.17%**", 1))
  script = _script()

  assert script.main(["--check", "--root", str(tmp_path)]) == 1
  out = capsys.readouterr().out
  assert "README.md" in out and "table 'results' differs" in out
  assert "-| `tiny`, sparse | full Fashion-MNIST" in out and "**93.17%**" in out and "**93.07%**" in out

  # Rendering writes the result files' number back; the check then passes.
  assert script.main(["--root", str(tmp_path)]) == 0
  assert (tmp_path / "README.md").read_text() == readme
  assert script.main(["--check", "--root", str(tmp_path)]) == 0


def test_check_fails_when_a_result_file_changes(tmp_path):
  _copy_sources(tmp_path)
  shutil.copy(ROOT / "README.md", tmp_path / "README.md")
  report = tmp_path / "checkpoints" / "cifar10_tiny" / "report" / "report.json"
  data = json.loads(report.read_text())
  data["metrics"]["snn_top1"] = 0.8200
  report.write_text(json.dumps(data))
  messages = results_tables.differences(tmp_path)
  assert len(messages) == 1 and "table 'results'" in messages[0] and "**82.00%**" in messages[0]


def test_text_outside_the_markers_is_kept():
  text = "before\n<!-- table:snn -->\nstale\n<!-- /table:snn -->\nafter **85.68%**\n"
  new = results_tables.rewrite(text, ROOT)
  assert new.startswith("before\n<!-- table:snn -->\n| variant | T |")
  assert new.endswith("<!-- /table:snn -->\nafter **85.68%**\n")


def test_unknown_table_names_the_known_ones():
  with pytest.raises(KeyError, match="no table named 'result'.*results, operations"):
    results_tables.rewrite("<!-- table:result -->\n<!-- /table:result -->\n", ROOT)


def test_a_new_model_is_one_entry(tmp_path, monkeypatch):
  report = json.loads((ROOT / "checkpoints" / "cifar10_tiny" / "report" / "report.json").read_text())
  report["metrics"].update(qann_top1=0.9412, snn_top1=0.9410, agreement=0.9996, ops_per_mac=0.5556)
  path = tmp_path / "checkpoints" / "cifar10_new" / "report" / "report.json"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps(report))
  _copy_sources(tmp_path)
  fast = results_tables.Model("cifar10_new", "`new`", "CIFAR-10: 45k train", "python -m ge2ms_jax.main --config X")
  monkeypatch.setattr(results_tables, "MODELS", results_tables.MODELS + (fast,))

  rows = results_tables.render("results", tmp_path).splitlines()
  assert len(rows) == 2 + len(results_tables.MODELS)
  assert rows[-1].startswith("| `new` | CIFAR-10: 45k train | `python -m ge2ms_jax.main --config X` | **94.12%** | "
                             "**94.10%** | 99.96% | 4 |")
  assert "| 0.556 |" in rows[-1]
  operations = results_tables.render("operations", tmp_path).splitlines()
  assert operations[-1].startswith("| `cifar10_new` (5,000 held-out images) |")


def test_sparse_goal_as_the_reports_state_it():
  goals = {g["dataset"]: g for g in results_tables.sparse_goal(ROOT)}
  fashion, cifar = goals["Fashion-MNIST"], goals["CIFAR-10"]
  assert fashion["within_ops"] and fashion["within_points"]
  assert round(fashion["sparse"]["ops_per_mac"], 3) == 0.292 and round(fashion["drop"], 2) == 0.31
  assert not cifar["within_ops"] and cifar["within_points"]
  assert round(cifar["sparse"]["ops_per_mac"], 3) == 0.303
  fast = goals["CIFAR-10 `fast`"]
  assert fast["within_ops"] and fast["within_points"]
  assert round(fast["sparse"]["ops_per_mac"], 3) == 0.289 and round(fast["drop"], 2) == -0.10
  row = results_tables.render("benchmarks", ROOT).splitlines()[-1]
  assert row.endswith("Fashion-MNIST met; CIFAR-10 not (0.303 ops/MAC); CIFAR-10 `fast` met |")


def _slug(heading: str) -> str:
  """GitHub's anchor for a Markdown heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
  text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
  return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("document", [p.relative_to(ROOT) for p in results_tables.documents(ROOT)], ids=str)
def test_relative_links_resolve(document):
  path = ROOT / document
  text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
  broken = []
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+:", target):
      continue
    file, _, anchor = target.partition("#")
    linked = (path.parent / file).resolve() if file else path
    if not linked.exists():
      broken.append(f"{target}: no such file")
    elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
      broken.append(f"{target}: no heading with that anchor")
  assert not broken, f"{document}: " + "; ".join(broken)


def test_model_entries_are_frozen_specs():
  model = results_tables.MODELS[0]
  assert model.name == "main_job" and model.path == "benchmarks/results/main_job.json" and not model.shipped
  assert dataclasses.replace(model, report=None).path == "checkpoints/main_job/report/report.json"
