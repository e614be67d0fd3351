"""si_jax.tables: the one markdown table and JSON writer."""

import json
import os

import pytest

from si_jax import tables


def test_markdown_table_escapes_cells_and_names_a_ragged_row():
  assert tables.markdown_table(["a", "b|c"], [[1, "x\ny"], ["|", 2.5]]).splitlines() == [
      "| a | b\\|c |", "|---|---|", "| 1 | x y |", "| \\| | 2.5 |"]
  with pytest.raises(ValueError, match=r"row 1 has 1 cells, the header 2"):
    tables.markdown_table(["a", "b"], [[1, 2], [3]])


def test_write_json_replaces_whole_files_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = os.fspath(tmp_path / "s.json")
  tables.write_json(path, {"b": 1, "a": [1, 2]}, indent=2, sort_keys=True)
  text = open(path, encoding="utf-8").read()
  assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
  with pytest.raises(TypeError):  # not JSON-able: the previous file survives, no temporary
    tables.write_json(path, {"x": object()})
  assert json.load(open(path, encoding="utf-8")) == {"a": [1, 2], "b": 1}
  assert os.listdir(tmp_path) == ["s.json"]
