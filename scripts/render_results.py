"""Renders the results tables of README.md, benchmarks/README.md and docs/*.md from the result files.

    python scripts/render_results.py            # rewrite every marked table in place
    python scripts/render_results.py --check    # exit 1, naming each table that differs, and show the diff

A table is rendered between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; the rest of a document
is left as it is. The sources are the shipped models' `checkpoints/*/report/report.json`,
`benchmarks/results/main_job.json` and the benchmarks' `benchmarks/results/*.json`
(`ge2ms_jax/results_tables.py` says which table reads what). Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ge2ms_jax import results_tables  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 when a table differs from what the result files give")
  parser.add_argument("--root", default=str(ROOT), help="the repository root (default: this script's)")
  args = parser.parse_args(argv)
  root = Path(args.root).resolve()
  if args.check:
    messages = results_tables.differences(root)
    for message in messages:
      print(message, end="\n\n")
    if messages:
      print(f"{len(messages)} table(s) differ from the result files; `python scripts/render_results.py` rewrites them.")
      return 1
    print(f"every results table matches the result files ({len(results_tables.documents(root))} documents).")
    return 0
  changed = results_tables.update(root)
  for path in changed:
    print(f"rewrote {path.relative_to(root)}")
  if not changed:
    print("every results table already matches the result files.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
