"""tfds builders: each builds from a small fixture in the published format (array_record, no
TensorFlow) and reads back every field; malformed rows are errors naming file, line, column."""

import base64
import json
import logging
import os
import pickle
import sys
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from si_jax.data import arith
from si_jax.data import sources
from si_jax.data.builders import RecordError
from si_jax.data.builders import math_sets
from si_jax.data.builders.arith import builder_config_for, row_to_example


def _write_jsonl(path, rows, raw_lines=()):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    for line in raw_lines:
      f.write(line + "\n")
  return path


def _write_parquet(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)
  return path


def _compress(obj) -> str:
  """LiveCodeBench's private-test encoding: base64(zlib(pickle(json string)))."""
  return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(obj)))).decode()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_data")


@pytest.fixture(scope="module")
def manual_root(tmp_path_factory):
  return tmp_path_factory.mktemp("manual")


# ---------------------------------------------------------------------------------------------
# Pure helpers.


@pytest.mark.parametrize("answer, want", [
    ("a\nb\n#### 72", "72"),
    ("#### 1,000 ", "1000"),
    ("x #### 3 #### -4", "-4"),
    ("no marker 5", None),
    ("#### ", None),
])
def test_gsm8k_final_answer(answer, want):
  assert math_sets.gsm8k_final_answer(answer) == want


# ---------------------------------------------------------------------------------------------
# Each builder: fixture in the published format -> build -> every field back, rows in == out.


def test_gsm8k_builds_and_reads_back_every_field(data_dir, manual_root):
  manual = manual_root / "gsm8k"
  train = [{"question": f"Tom has {i} apples. ünïcode?", "answer": f"He has {i}.\n#### {i}"}
           for i in range(5)]
  test = [{"question": "How many?", "answer": "3 * 400 = <<3*400=1200>>1200\n#### 1,200"}]
  _write_jsonl(manual / "train.jsonl", train, raw_lines=["", "   "])  # blank lines: not rows
  _write_jsonl(manual / "test.jsonl", test)

  rows = sources.load_split("gsm8k", "train", data_dir, manual)
  assert len(rows) == len(train)
  for i, (row, src) in enumerate(zip(rows, train)):
    assert row == {"source": f"train.jsonl:line {i + 1}", "question": src["question"],
                   "answer": src["answer"], "final_answer": str(i)}
  (t,) = sources.load_split("gsm8k", "test", data_dir, manual)
  assert t["final_answer"] == "1200" and t["answer"] == test[0]["answer"]

  # array_record files, written without TensorFlow.
  builder = sources.get_builder("gsm8k", data_dir)
  files = os.listdir(builder.data_dir)
  assert any(".array_record-" in f for f in files), files
  assert "tensorflow" not in sys.modules
  assert builder.info.metadata["rows_in"] == {"train": 5, "test": 1}
  # Plain tfds reads it too (raw bytes, no decoding).
  raw = tfds.data_source("si_gsm8k", split="train", data_dir=data_dir, download=False)
  assert len(raw) == 5 and raw[2]["question"] == train[2]["question"].encode()


def test_math_accepts_original_and_math500_shapes(data_dir, manual_root):
  manual = manual_root / "math"
  rows_in = [
      # Original MATH: no answer column, "Level N", 'type'.
      {"problem": "Find $x$.", "solution": r"So $x = \boxed{\frac{1}{2}}$.", "level": "Level 5",
       "type": "Algebra"},
      {"problem": "?", "solution": r"\boxed{3}", "level": "Level ?", "type": "Geometry"},
      # MATH-500 shape: answer, int level, subject, unique_id.
      {"problem": "P", "solution": r"\boxed{4}", "answer": "4", "subject": "Number Theory",
       "level": 2, "unique_id": "test/number_theory/1.json"},
      # AIME-like integer answer, no level.
      {"problem": "Q", "answer": 12},
      # Escaped braces inside the box; the last box wins.
      {"problem": "S", "solution": r"First \boxed{0}, then $\boxed{\{1, 2\}}$."},
  ]
  _write_jsonl(manual / "test.jsonl", rows_in)
  rows = sources.load_split("math", "test", data_dir, manual)
  assert len(rows) == 5
  assert rows[0] == {"source": "test.jsonl:line 1", "problem": "Find $x$.",
                     "solution": rows_in[0]["solution"], "answer": r"\frac{1}{2}", "level": 5,
                     "subject": "Algebra", "unique_id": ""}
  assert (rows[1]["answer"], rows[1]["level"]) == ("3", -1)
  assert rows[2] == {"source": "test.jsonl:line 3", "problem": "P", "solution": r"\boxed{4}",
                     "answer": "4", "level": 2, "subject": "Number Theory",
                     "unique_id": "test/number_theory/1.json"}
  assert rows[3]["answer"] == "12" and rows[3]["solution"] == "" and rows[3]["level"] == -1
  assert rows[4]["answer"] == r"\{1, 2\}"


def test_math500_builds_under_its_own_name(data_dir, manual_root):
  manual = manual_root / "math500"
  src = [{"problem": f"p{i}", "solution": f"\\boxed{{{i}}}", "answer": str(i),
          "subject": "Prealgebra", "level": 1 + i % 5, "unique_id": f"test/prealgebra/{i}.json"}
         for i in range(7)]
  _write_jsonl(manual / "test.jsonl", src)
  rows = sources.load_split("math500", "test", data_dir, manual)
  assert [r["unique_id"] for r in rows] == [s["unique_id"] for s in src]
  assert [r["level"] for r in rows] == [s["level"] for s in src]
  assert sources.get_builder("math500", data_dir).data_dir != sources.get_builder(
      "math", data_dir).data_dir


def test_deepmath_reads_parquet_shards_in_order(data_dir, manual_root):
  manual = manual_root / "deepmath"
  shard0 = [{"question": f"q{i}", "final_answer": f"{i}", "difficulty": 5.5 + i,
             "topic": "Mathematics -> Algebra", "r1_solution_1": f"s1-{i}",
             "r1_solution_2": f"s2-{i}", "r1_solution_3": f"s3-{i}"} for i in range(3)]
  shard1 = [{"question": "q3", "final_answer": r"\dfrac{\pi}{2}", "difficulty": 9.0,
             "topic": "Calculus", "r1_solution_1": "only", "r1_solution_2": None,
             "r1_solution_3": None}]
  _write_parquet(manual / "train-00001-of-00002.parquet", shard1)
  _write_parquet(manual / "train-00000-of-00002.parquet", shard0)
  rows = sources.load_split("deepmath", "train", data_dir, manual)
  assert len(rows) == 4
  assert rows[0] == {"source": "train-00000-of-00002.parquet:row 1", "question": "q0",
                     "final_answer": "0", "difficulty": 5.5, "topic": "Mathematics -> Algebra",
                     "r1_solutions": ["s1-0", "s2-0", "s3-0"]}
  assert rows[3]["source"] == "train-00001-of-00002.parquet:row 1"
  assert rows[3]["r1_solutions"] == ["only"] and rows[3]["final_answer"] == r"\dfrac{\pi}{2}"


def test_deepmath_jsonl_without_solutions(tmp_path):
  manual = tmp_path / "manual"
  _write_jsonl(manual / "train.jsonl",
               [{"question": "q", "final_answer": "2", "difficulty": 7}])
  (row,) = sources.load_split("deepmath", "train", tmp_path / "data", manual)
  assert row["r1_solutions"] == [] and row["difficulty"] == 7.0 and row["topic"] == ""


def test_aime_and_hmmt(data_dir, manual_root):
  _write_parquet(manual_root / "aime" / "aime2025-I.parquet",
                 [{"problem_idx": 1, "problem": "Find N.", "answer": 70},
                  {"problem_idx": 2, "problem": "Find M.", "answer": 588}])
  _write_jsonl(manual_root / "aime" / "aime2024.jsonl",
               [{"id": "2024-I-1", "problem": "P", "answer": "204", "solution": "S"}])
  rows = sources.load_split("aime", "aime2025", data_dir, manual_root / "aime")
  assert [(r["id"], r["problem"], r["answer"], r["solution"]) for r in rows] == [
      ("1", "Find N.", "70", ""), ("2", "Find M.", "588", "")]
  (r24,) = sources.load_split("aime", "aime2024", data_dir, manual_root / "aime")
  assert r24 == {"source": "aime2024.jsonl:line 1", "id": "2024-I-1", "problem": "P",
                 "answer": "204", "solution": "S"}

  _write_jsonl(manual_root / "hmmt" / "test.jsonl", [{"question": "H?", "answer": "\\sqrt2"}])
  (h,) = sources.load_split("hmmt", "test", data_dir, manual_root / "hmmt")
  assert (h["problem"], h["answer"], h["id"]) == ("H?", "\\sqrt2", "")


def test_livecodebench_stdin_functional_and_compressed_tests(data_dir, manual_root):
  public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
  private = [{"input": "5 5\n", "output": "10\n", "testtype": "stdin"},
             {"input": "0 0\n", "output": "0\n", "testtype": "stdin"}]
  func = [{"input": "[1, 2]\n3", "output": "true", "testtype": "functional"}]
  src = [
      {"question_title": "A+B", "question_content": "Add two numbers.", "platform": "atcoder",
       "question_id": "abc001_a", "contest_id": "abc001", "contest_date": "2024-08-01T00:00:00",
       "starter_code": "", "difficulty": "easy", "public_test_cases": json.dumps(public),
       "private_test_cases": _compress(private), "metadata": "{}"},
      {"question": "Two sum.", "starter_code": "class Solution:\n    def twoSum(self, a, t):",
       "public_test_cases": json.dumps(func), "private_test_cases": json.dumps([]),
       "metadata": json.dumps({"func_name": "twoSum"}), "question_id": 7},
  ]
  manual = manual_root / "lcb"
  _write_jsonl(manual / "test.jsonl", src)
  rows = sources.load_split("livecodebench", "test", data_dir, manual)
  assert rows[0] == {
      "source": "test.jsonl:line 1", "question_id": "abc001_a", "question_title": "A+B",
      "question_content": "Add two numbers.", "starter_code": "", "platform": "atcoder",
      "difficulty": "easy", "contest_date": "2024-08-01T00:00:00", "func_name": "",
      "public_tests": public, "private_tests": private}
  assert rows[1]["question_content"] == "Two sum." and rows[1]["func_name"] == "twoSum"
  assert rows[1]["public_tests"] == func and rows[1]["private_tests"] == []
  assert rows[1]["question_id"] == "7"


def test_arith_builder_matches_arith_dataset(data_dir):
  config = arith.ArithConfig(num_steps=(2, 3), modulus=7, train_size=20, test_size=5, seed=3)
  for split in ("train", "test"):
    rows = sources.load_split("arith", split, data_dir, config=config)
    want = arith.ArithDataset(config, split)
    assert len(rows) == len(want)
    assert [row_to_example(r) for r in rows] == list(want)
  # Another config gets its own directory; no modulus is stored as 0 and read back as None.
  other = arith.ArithConfig(num_steps=2, modulus=None, operators=("+",), train_size=3,
                            test_size=0)
  rows = sources.load_split("arith", "train", data_dir, config=other)
  assert [row_to_example(r) for r in rows] == list(arith.ArithDataset(other, "train"))
  assert rows[0]["modulus"] == 0 and row_to_example(rows[0]).meta["modulus"] is None
  assert (sources.get_builder("arith", data_dir, config=config).data_dir !=
          sources.get_builder("arith", data_dir, config=other).data_dir)
  with pytest.raises(ValueError, match="no split 'test'"):
    sources.load_split("arith", "test", data_dir, config=other)


def test_arith_builder_stores_multi_part_problems(data_dir):
  config = arith.ArithConfig(parts=3, num_steps=(1, 4), train_size=12, test_size=4, seed=2)
  for split in ("train", "test"):
    rows = sources.load_split("arith", split, data_dir, config=config)
    examples = [row_to_example(r) for r in rows]
    assert examples == list(arith.ArithDataset(config, split))
    assert all(arith.verify(e, e.meta["solution"]).reward == 1.0 for e in examples)
  assert list(rows[0]["part_steps"]) == [p.num_steps for p in arith.as_problem(examples[0]).parts]
  # parts=1 is left out of the digest: single-chain configs keep the directories they had.
  assert "parts" not in builder_config_for(arith.ArithConfig(seed=2)).description
  assert '"parts": 3' in builder_config_for(config).description
  assert (sources.get_builder("arith", data_dir, config=config).data_dir !=
          sources.get_builder("arith", data_dir, config=arith.ArithConfig(
              parts=2, num_steps=(1, 4), train_size=12, test_size=4, seed=2)).data_dir)


# ---------------------------------------------------------------------------------------------
# Malformed rows: an error naming the file, the line and the column; nothing dropped.

_GOOD_GSM = json.dumps({"question": "q", "answer": "#### 1"})


class _Evil:

  def __reduce__(self):
    return (os.system, ("echo pwned",))


@pytest.mark.parametrize("name, lines, line_no, column, fragment", [
    ("gsm8k", [_GOOD_GSM, _GOOD_GSM, '{"question": "q", "answer": '], 3, None, "invalid JSON"),
    ("gsm8k", [_GOOD_GSM, "[1, 2]"], 2, None, "expected a JSON object"),
    ("gsm8k", [_GOOD_GSM, json.dumps({"question": "q"})], 2, "answer", "missing required"),
    ("gsm8k", [json.dumps({"question": 5, "answer": "#### 1"})], 1, "question",
     "expected a string, got int"),
    ("gsm8k", [json.dumps({"question": "q", "answer": "no marker"})], 1, "answer", "####"),
    ("math", [json.dumps({"problem": "p", "solution": "no box"})], 1, "solution", "boxed"),
    ("math", [json.dumps({"problem": "p", "answer": "1", "level": "hard"})], 1, "level",
     "Level <n>"),
    ("deepmath", [json.dumps({"question": "q", "final_answer": "1", "difficulty": "5"})], 1,
     "difficulty", "expected a number"),
    ("aime", [json.dumps({"problem": "p", "answer": [1]})], 1, "answer",
     "a string or an integer"),
    ("aime", [json.dumps({"problem": "p", "answer": True})], 1, "answer",
     "a string or an integer"),
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": "[{"})], 1,
     "public_test_cases", "not a JSON list"),
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": json.dumps(
        [{"input": "1", "output": 2}])})], 1, "public_test_cases", "'output' must be a string"),
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": json.dumps(
        [{"input": "1", "output": "2", "testtype": "weird"}])})], 1, "public_test_cases",
     "testtype"),
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": "[]",
                                   "private_test_cases": "[]"})], 1, "public_test_cases",
     "no test cases"),
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": json.dumps(
        [{"input": "1", "output": "2", "testtype": "functional"}])})], 1, "metadata",
     "func_name"),
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": json.dumps(
        [{"input": "1", "output": "2", "testtype": "functional"}]), "private_test_cases":
        json.dumps([{"input": "1", "output": "2"}]), "metadata": '{"func_name": "f"}'})], 1,
     "private_test_cases", "mix test types"),
    # A compressed payload that would run code if unpickled naively: refused, not executed.
    ("livecodebench", [json.dumps({"question_content": "c", "public_test_cases": "[]",
                                   "private_test_cases": base64.b64encode(zlib.compress(
                                       pickle.dumps(_Evil()))).decode()})], 1,
     "private_test_cases", "not a JSON list"),
])
def test_malformed_row_names_file_line_and_column(tmp_path, name, lines, line_no, column,
                                                  fragment):
  manual = tmp_path / "manual"
  path = _write_jsonl(manual / "test.jsonl", [], raw_lines=lines)
  with pytest.raises(RecordError) as e:
    sources.load_split(name, "test", tmp_path / "data", manual)
  msg = str(e.value)
  assert msg.startswith(f"{path}:line {line_no}: "), msg
  assert fragment in msg, msg
  if column is not None:
    assert f"column {column!r}" in msg and e.value.column == column, msg


def test_malformed_parquet_row_names_row(tmp_path):
  manual = tmp_path / "manual"
  path = _write_parquet(manual / "train-00000-of-00001.parquet",
                        [{"question": "q", "final_answer": "1", "difficulty": 1.0},
                         {"question": None, "final_answer": "2", "difficulty": 2.0}])
  with pytest.raises(RecordError, match=rf"^{path}:row 2: column 'question': missing required"):
    sources.load_split("deepmath", "train", tmp_path / "data", manual)


# ---------------------------------------------------------------------------------------------
# Manual dir errors, staleness, splits.


def test_missing_manual_dir_names_directory_and_expected_files(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError) as e:
    sources.load_split("gsm8k", "train", tmp_path / "data", missing)
  assert str(missing) in str(e.value) and "train.jsonl" in str(e.value)


def test_manual_dir_without_split_files(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "README.txt").write_text("hi")
  with pytest.raises(FileNotFoundError) as e:
    sources.load_split("math500", "test", tmp_path / "data", manual)
  msg = str(e.value)
  assert str(manual) in msg and "README.txt" in msg and "test.jsonl" in msg


def test_default_manual_dir_is_under_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    sources.load_split("aime", "test", tmp_path / "data")
  assert str(tmp_path / "data" / "downloads" / "manual" / "si_aime") in str(e.value)


def test_unknown_split_and_dataset(tmp_path):
  manual = tmp_path / "manual"
  _write_jsonl(manual / "test.jsonl", [{"question": "q", "answer": "#### 1"}])
  with pytest.raises(ValueError, match=r"no split 'train'.*\['test'\]"):
    sources.load_split("gsm8k", "train", tmp_path / "data", manual)
  with pytest.raises(ValueError, match="unknown dataset 'gsm9k'"):
    sources.load_split("gsm9k", "test", tmp_path / "data", manual)


def test_changed_files_are_rebuilt_and_built_data_used_without_manual_dir(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _write_jsonl(manual / "test.jsonl", [{"question": "old", "answer": "#### 1"}])
  assert [r["question"] for r in sources.load_split("gsm8k", "test", data, manual)] == ["old"]
  _write_jsonl(manual / "test.jsonl", [{"question": "new", "answer": "#### 1"},
                                       {"question": "new2", "answer": "#### 2"}])
  rows = sources.load_split("gsm8k", "test", data, manual)
  assert [r["question"] for r in rows] == ["new", "new2"]
  # Without a manual dir (and none at the default place) the built copy is used as it is.
  rows = sources.load_split("gsm8k", "test", data, None)
  assert len(rows) == 2 and rows[-1]["final_answer"] == "2"
  with pytest.raises(IndexError):
    rows[2]  # pylint: disable=pointless-statement


def test_a_named_manual_dir_that_is_gone_or_mistyped_is_an_error_not_the_old_build(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _write_jsonl(manual / "test.jsonl", [{"question": "q", "answer": "#### 1"}])
  assert len(sources.load_split("gsm8k", "test", data, manual)) == 1
  with pytest.raises(FileNotFoundError) as e:
    sources.load_split("gsm8k", "test", data, tmp_path / "manaul")  # a typo
  msg = str(e.value)
  assert msg.startswith(f"si_gsm8k: manual_dir {tmp_path / 'manaul'} does not exist (the "
                        f"dataset built in "), msg
  assert f"from {manual}" in msg and "train.jsonl" in msg, msg


def test_another_manual_dir_is_a_rebuild_even_with_files_that_look_the_same(tmp_path):
  import shutil
  a, b, data = tmp_path / "a", tmp_path / "b", tmp_path / "data"
  _write_jsonl(a / "test.jsonl", [{"question": "from a", "answer": "#### 1"}])
  b.mkdir()
  shutil.copy2(a / "test.jsonl", b / "test.jsonl")  # same name, size and mtime
  assert sources.load_split("gsm8k", "test", data, a)[0]["question"] == "from a"
  assert sources.get_builder("gsm8k", data).info.metadata["manual_dir"] == str(a)
  (b / "test.jsonl").write_text(json.dumps({"question": "from b", "answer": "#### 1"}) + "\n")
  os.utime(b / "test.jsonl", ns=(os.stat(a / "test.jsonl").st_atime_ns,
                                 os.stat(a / "test.jsonl").st_mtime_ns))
  assert sources.load_split("gsm8k", "test", data, b)[0]["question"] == "from b"
  assert sources.get_builder("gsm8k", data).info.metadata["manual_dir"] == str(b)


# ---------------------------------------------------------------------------------------------
# Quiet builds: nothing is downloaded, so tfds' download talk is not printed.

_NOISE = ("Downloading and preparing dataset", "downloaded and prepared to",
          "has no dataset_info.json")


@pytest.mark.parametrize("name", ["gsm8k", "arith"])
def test_a_build_prints_no_download_line_and_no_missing_info_warning(tmp_path, capsys, caplog,
                                                                     name):
  caplog.set_level(logging.INFO)
  manual = tmp_path / "manual"
  _write_jsonl(manual / "test.jsonl", [{"question": "q", "answer": "#### 1"}])
  kwargs = {"config": arith.ArithConfig(train_size=0, test_size=3)} if name == "arith" else {}
  rows = sources.load_split(name, "test", tmp_path / "data", manual, **kwargs)
  assert len(rows) in (1, 3)
  out, err = capsys.readouterr()
  logged = [r.getMessage() for r in caplog.records]
  for noise in _NOISE:
    assert noise not in out and noise not in err, (noise, out, err)
    assert not [m for m in logged if noise in m], (noise, logged)
  # What tfds printed is said once, truthfully, at INFO level.
  built = sources.get_builder(name, tmp_path / "data", **kwargs)
  assert [m for m in logged if m.startswith(f"si_{name}: ")] == [
      f"si_{name}: building into {built.data_dir} (nothing is downloaded)",
      f"si_{name}: built in {built.data_dir}"]
  # Loading the built dataset again builds nothing and says none of it.
  caplog.clear()
  sources.load_split(name, "test", tmp_path / "data", manual, **kwargs)
  out, err = capsys.readouterr()
  logged = [r.getMessage() for r in caplog.records]
  assert not any(noise in text for noise in _NOISE for text in [out, err] + logged)
  assert not [m for m in logged if m.startswith(f"si_{name}: ")]
