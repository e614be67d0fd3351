"""experiments/reproduce_arith.py put together from stored parts: a study's table is rebuilt
from its _runs.json alone (`--merge`, the run folders gone), a new part's runs are added beside
the merged ones with their wall time, and a file that is not a _runs.json is named."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")


def _module():
  spec = importlib.util.spec_from_file_location(
      "reproduce_arith", os.path.join(REPO, "experiments", "reproduce_arith.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _body(path):
  with open(path, encoding="utf-8") as f:
    return f.read().split("\n", 1)[1]


def test_a_stored_study_is_rebuilt_from_its_runs_and_a_new_part_joins_it(tmp_path):
  ra = _module()
  stored = os.path.join(RESULTS, "arith_dilution_parts2_runs.json")
  args = ["--study", "dilution", "--tasks", "parts2", "--best", "+ balanced signal",
          "--report_only", "--out", str(tmp_path / "out")]
  # the run folders are gone (an empty --root): the merged file alone rebuilds the table
  assert ra.main(args + ["--seeds", "0,1,2", "--merge", stored,
                         "--root", str(tmp_path / "empty")]) == 0
  table = tmp_path / "out" / "arith_dilution_parts2_table.md"
  assert _body(table) == _body(os.path.join(RESULTS, "arith_dilution_parts2_table.md"))
  header = table.read_text().split("\n", 1)[0]
  assert "0 min of si-train wall time over 0 runs" in header
  assert f"9 more runs merged from {stored}" in header
  # a new part: seed 2 found under --root (its finished run folders), seeds 0 and 1 merged
  runs, walls = ra.load_runs(stored)
  assert walls == {} and sorted(runs["GSPO"]) == [0, 1, 2]
  part = tmp_path / "part.json"
  part.write_text(json.dumps({m: {str(s): r[s] for s in (0, 1)} for m, r in runs.items()}))
  root = tmp_path / "root" / "parts2"
  for name, method, wall in (("cold_start_seed2", None, 100.0),
                             ("gspo_40steps_seed2", "GSPO", 600.0),
                             ("balanced_signal_40steps_seed2", "+ balanced signal", 900.0)):
    os.makedirs(root / name)
    (root / name / "summary.json").write_text(json.dumps({"wall_s": wall}))
    if method:
      with open(root / name / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in runs[method][2])
  assert ra.main(args + ["--seeds", "0,1,2", "--merge", str(part),
                         "--root", str(tmp_path / "root")]) == 0
  assert _body(table) == _body(os.path.join(RESULTS, "arith_dilution_parts2_table.md"))
  assert "27 min of si-train wall time over 3 runs" in table.read_text().split("\n", 1)[0]
  merged, walls = ra.load_runs(str(tmp_path / "out" / "arith_dilution_parts2_runs.json"))
  assert merged == runs
  assert walls == {"GSPO|2": 600.0, "+ balanced signal|2": 900.0, "cold|2": 100.0}


def test_a_merge_file_that_is_not_a_runs_file_is_named(tmp_path):
  ra = _module()
  bad = tmp_path / "bad.json"
  for text in ("{not json", json.dumps({"GSPO": ["rows"]})):
    bad.write_text(text)
    with pytest.raises(SystemExit, match=f"--merge {bad}"):
      ra.main(["--study", "dilution", "--tasks", "parts2", "--best", "+ balanced signal",
               "--report_only", "--merge", str(bad), "--root", str(tmp_path / "r"),
               "--out", str(tmp_path / "o")])
