"""si-bench: the FLOP model by hand, the table's structure, and one minuscule end-to-end run.

No timing assertions: timings on a shared CPU are noise. The end-to-end run checks that both
sides computed the same model (parity columns) and that the table and JSON are well formed.
"""

import json
import math
import statistics

import pytest

from si_jax.tools import bench
from si_jax.tools.bench import common as bench_common
from si_jax.models.config import preset


def test_flop_model_by_hand():
  cfg = preset("tiny")  # d=128, L=2, H=4, KV=2, hd=32, F=384, V=512
  body = 2 * 2 * (128 * 32 * (2 * 4 + 2 * 2) + 3 * 128 * 384)  # 786,432
  head = 2 * 128 * 512  # 131,072
  attn = 4 * 2 * 4 * 32  # per key: 1,024
  assert bench.train_flops(cfg, 1, 2) == 3 * (2 * (body + head) + attn * (1 + 2))
  assert bench.train_flops(cfg, 3, 2) == 3 * bench.train_flops(cfg, 1, 2)
  prefill = 2 * body + head + attn * (1 + 2)
  decode = body + head + attn * 3  # one decode step: the second new token sees 3 keys
  assert bench.generate_flops(cfg, 1, 2, 2) == prefill + decode
  assert bench.generate_flops(cfg, 1, 2, 1) == prefill  # the first token comes from prefill


@pytest.mark.parametrize("size", ["tiny", "25m"])
def test_matmul_flops_are_twice_the_matmul_params(size):
  cfg = preset(size)
  d, L = cfg.hidden_size, cfg.num_layers
  norms = 2 * L * d + d + (2 * L * cfg.head_dim if cfg.qk_norm else 0)
  embed = cfg.vocab_size * d  # a lookup, not a matmul
  assert bench_common.body_flops(cfg) + bench_common.head_flops(cfg) == 2 * (cfg.num_params() - norms - embed)


def _row(**kw):
  row = dict(size="25m", params=33_600_000, workload="train", shape="B=8 T=256",
             jax_tok_s=500.0, hf_tok_s=540.0, ratio=500 / 540, target=1.0, jax_gflops=100.0,
             hf_gflops=108.0, jax_peak_frac=0.78, hf_peak_frac=0.82, jax_faults=1234.0,
             hf_faults=56.0, jax_sys_s=0.0125, hf_sys_s=0.5, parity="loss diff 1e-07")
  row.update(kw)
  return row


def _cells(line):
  assert line.startswith("| ") and line.endswith(" |"), line
  return [c.strip() for c in line[2:-2].split(" | ")]


def test_markdown_table_marks_targets():
  lines = bench.markdown_table(
      [_row(), _row(ratio=1.3, jax_tok_s=700.0), _row(size="tiny", target=None)]).splitlines()
  assert _cells(lines[0]) == list(bench.COLUMNS)
  assert lines[1] == "|" + "---|" * len(bench.COLUMNS)
  rows = [dict(zip(bench.COLUMNS, _cells(l))) for l in lines[2:]]
  assert [r["target"] for r in rows] == [">= 1x MISSED", ">= 1x met", "-"]
  assert rows[0]["ratio"] == "0.93x" and rows[0]["params"] == "33.60M"
  assert rows[1]["si_jax tok/s"] == "700" and rows[0]["si_jax % peak"] == "78%"
  assert rows[0]["si_jax faults/call"] == "1,234" and rows[0]["HF sys s/call"] == "0.500"


def test_load_warning_is_loud_only_when_the_load_exceeds_the_cpus():
  assert bench.load_warning(1.9, 2, "at start") == ""
  warning = bench.load_warning(3.2, 2, "at start")
  assert "WARNING: load average 3.2 at start on 2 CPUs" in warning
  assert "NOT comparable" in warning and warning.startswith("!" * 78)


def test_header_names_machine_load_allocator_and_xla_flags():
  env = dict(cpu_model="AMD EPYC 9B14", cpu_count=2, torch_threads=2, loadavg=[0.5, 1.0, 1.5],
             allocator_detail="jemalloc (SI_ALLOCATOR=auto)", xla_flags="", python="3.11.7",
             jax="0.10.2", jax_backend="cpu", torch="2.13.0", transformers="5.24.0")
  lines = bench.header(env).splitlines()
  assert lines[:4] == ["machine: AMD EPYC 9B14 (2 CPUs, torch threads 2)",
                       "load average (1/5/15 min): 0.50 1.00 1.50",
                       "allocator: jemalloc (SI_ALLOCATOR=auto)", "XLA_FLAGS: (none)"]
  assert bench.cpu_model()  # this machine's, from lscpu or /proc/cpuinfo


def test_time_calls_counts_page_faults_and_system_time():
  usage = {}
  times = bench.time_calls(lambda: bytearray(8 << 20), repeats=3, warmup=0, usage=usage)
  assert len(times) == 3 and set(usage) == {"faults", "sys_s"}
  assert usage["faults"] > 0 and usage["sys_s"] >= 0  # fresh 8 MB buffers are faulted in


def test_contended_heuristic():
  assert not bench.contended(0.3, 2.4, cpus=2)  # idle before, only the benchmark after
  assert bench.contended(3.0, 2.4, cpus=2)  # busy before it started
  assert bench.contended(0.3, 3.5, cpus=2)  # someone else joined during the run


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "tiny,huge"], "unknown preset"),
    (["--workloads", "decode,serve"], "--workloads"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--train_len", "1"], "--train_len must be >= 2"),
    (["--torch_adamw", "sgd"], "--torch_adamw"),
    (["--attention", "flash"], "--attention must be one of"),
    (["--remat", "some"], "--remat"),
    (["--memory_lens", "1024,x"], "--memory_lens must be comma-separated integers >= 2"),
    (["--attention_block", "0"], "--attention_block must be >= 1, got 0"),
    (["--workloads", "floor", "--new_tokens", "1"], "--new_tokens must be >= 2 for the floor"),
])
def test_bad_flags_are_named(argv, message, capsys):
  with pytest.raises(SystemExit):
    bench.main(argv)
  assert message in capsys.readouterr().err


def test_minuscule_end_to_end(tmp_path, capsys):
  out = tmp_path / "bench.json"
  report = bench.main([
      "--sizes", "tiny", "--workloads", "train,decode", "--repeats", "1", "--warmup", "1",
      "--batch", "2", "--prompt_len", "8", "--new_tokens", "4", "--train_batch", "2",
      "--train_len", "16", "--torch_adamw", "fused", "--peak_n", "64", "--json", str(out)])
  printed = capsys.readouterr().out

  # The table: header, separator, one row per (size, workload), every row complete.
  lines = printed.splitlines()
  start = lines.index("| " + " | ".join(bench.COLUMNS) + " |")
  body = lines[start + 2:start + 4]
  rows = [dict(zip(bench.COLUMNS, _cells(l))) for l in body]
  assert all(len(_cells(l)) == len(bench.COLUMNS) for l in body)
  assert [(r["size"], r["workload"]) for r in rows] == [("tiny", "train"), ("tiny", "decode")]
  # T=16 fits one attention block: "auto" takes dense; the default remat policy is "dots".
  assert rows[0]["shape"] == "B=2 T=16, dense/dots, torch AdamW fused"
  assert rows[1]["shape"] == "B=2 P=8 N=4"
  assert rows[0]["target"].startswith(">= 1x ") and rows[1]["target"].startswith(">= 3x ")
  assert all(float(r["si_jax faults/call"].replace(",", "")) >= 0 for r in rows)
  assert "cpu_count=" in printed and "torch=" in printed and "load average" in printed
  assert lines[0].startswith("machine: ") and "allocator: " in printed and "XLA_FLAGS: " in printed

  # The JSON holds the same rows, with consistent numbers.
  saved = json.loads(out.read_text())
  assert saved["rows"] == json.loads(json.dumps(report["rows"]))
  assert saved["env"]["jax_backend"] == "cpu" and isinstance(saved["env"]["contended"], bool)
  assert saved["env"]["cpu_model"] and saved["env"]["allocator"] in (
      "jemalloc", "tcmalloc", "glibc", "system")
  assert "xla_flags" in saved["env"] and "loadavg_end" in saved["env"]
  assert saved["peaks"]["n"] == 64 and saved["peaks"]["jax_gflops"] > 0
  train, decode = saved["rows"]
  for r in saved["rows"]:
    assert len(r["jax_times"]) == len(r["hf_times"]) == 1
    assert math.isclose(r["ratio"], r["hf_times"][0] / r["jax_times"][0])
    assert math.isclose(r["jax_tok_s"], r["tokens"] / r["jax_times"][0])
    assert math.isclose(r["hf_gflops"], r["flops"] / r["hf_times"][0] / 1e9)
  assert decode["tokens"] == 2 * 4 and train["tokens"] == 2 * 16
  assert train["attention"] == "dense" and train["remat"] == "dots"
  for r in saved["rows"]:
    assert r["jax_faults"] >= 0 and r["hf_faults"] >= 0 and r["jax_sys_s"] >= 0

  # Both sides ran the same model on the same weights (decode runs after the train row, whose
  # optimizer steps must not leak into either side's weights).
  assert decode["first_token_agreement"] == 1.0
  assert decode["token_agreement"] == 1.0
  assert train["loss_diff"] < 1e-4
  assert math.isclose(train["loss_jax"], math.log(512), rel_tol=0.05)  # near-uniform at init


def test_align_workload_needs_no_model(tmp_path, capsys):
  from si_jax.tools.bench import align as align_bench

  with pytest.raises(SystemExit):
    bench.main(["--workloads", "align", "--align_len", "0"])
  assert "--align_len must be >= 1, got 0" in capsys.readouterr().err

  out = tmp_path / "align.json"
  report = bench.main(["--workloads", "align", "--align_pairs", "20", "--align_len", "200",
                       "--repeats", "2", "--warmup", "1", "--json", str(out)])
  printed = capsys.readouterr().out
  assert report["rows"] == [] and report["peaks"] is None  # no model, no matmul peak

  lines = printed.splitlines()
  start = lines.index("| " + " | ".join(align_bench.COLUMNS) + " |")
  rows = [dict(zip(align_bench.COLUMNS, _cells(l))) for l in lines[start + 2:start + 5]]
  assert [r["call"] for r in rows] == [
      "bare editops", "bare editops, score_hint=64", "stage: align + edit arrays + token_credit"]
  assert all(r["shape"].startswith("20 pairs x 200 tokens, mean distance ") for r in rows)
  assert rows[0]["vs bare"] == "1.00x" and rows[2]["target"].startswith(">= 0.8x ")
  assert "| size |" not in printed  # no empty model table

  saved = json.loads(out.read_text())
  assert saved["align_rows"] == json.loads(json.dumps(report["align_rows"]))
  bare, hinted, stage = saved["align_rows"]
  for r in saved["align_rows"]:
    assert len(r["times"]) == 2
    assert math.isclose(r["pairs_s"], 20 / statistics.median(r["times"]))
    assert math.isclose(r["ratio"], r["pairs_s"] / bare["pairs_s"])
  assert math.isclose(stage["ratio_same_args"], stage["pairs_s"] / hinted["pairs_s"])
  assert 0 < bare["mean_distance"] <= 10 * 30  # 3..10 regions of 1..30 tokens each


def test_memory_workload_compiles_train_steps_without_running_them(tmp_path, capsys):
  out = tmp_path / "memory.json"
  report = bench.main(["--sizes", "tiny", "--workloads", "memory", "--memory_lens", "64,256",
                       "--attention_block", "32", "--json", str(out)])
  printed = capsys.readouterr().out
  assert report["rows"] == [] and report["peaks"] is None  # nothing timed, no torch side

  lines = printed.splitlines()
  start = lines.index("| " + " | ".join(bench.MEMORY_COLUMNS) + " |")
  table = [dict(zip(bench.MEMORY_COLUMNS, _cells(l))) for l in lines[start + 2:start + 10]]
  assert [(r["attention"], r["remat"], r["shape"]) for r in table] == [
      (a, m, f"B=1 T={T}") for T in (64, 256) for a in ("dense", "blockwise")
      for m in ("none", "dots")]

  saved = json.loads(out.read_text())
  assert saved["memory_rows"] == json.loads(json.dumps(report["memory_rows"]))
  rows = {(r["attention"], r["remat"], r["length"]): r for r in saved["memory_rows"]}
  for r in rows.values():
    assert math.isclose(r["peak_mb"], r["arguments_mb"] + r["outputs_mb"] - r["aliased_mb"]
                        + r["temp_mb"])
    # The donated train state is reused in place: only tokens and mask are not aliased.
    assert r["aliased_mb"] > 0 and 0 < r["arguments_mb"] - r["aliased_mb"] < 0.01
  # At 256 tokens the dense backward keeps [L, B, H, T, T] probabilities; blockwise does not,
  # and the "dots" policy drops the MLP activations too.
  t_by_t_mb = 2 * 1 * 4 * 256 * 256 * 4 / 1e6
  assert rows["dense", "none", 256]["temp_mb"] > rows["blockwise", "none", 256]["temp_mb"] + (
      t_by_t_mb)
  assert rows["blockwise", "dots", 256]["temp_mb"] < rows["blockwise", "none", 256]["temp_mb"]


def test_floor_workload_splits_decode_and_train_time(tmp_path, capsys):
  """The floor rows: the decode call's parts add up to the call, the train step's matmul share
  comes from a real profile (an instruction-named event of the step), and with the decode /
  train rows in the same run the ratios use HF's times from those rows."""
  from si_jax.tools.bench import floor as bench_floor
  out = tmp_path / "bench.json"
  bench.main(["--sizes", "tiny", "--workloads", "decode,train,floor", "--repeats", "1",
              "--warmup", "1", "--batch", "2", "--prompt_len", "8", "--new_tokens", "4",
              "--train_batch", "2", "--train_len", "16", "--peak_n", "64", "--json", str(out)])
  printed = capsys.readouterr().out
  saved = json.loads(out.read_text())
  decode, train = saved["floor_rows"]
  assert (decode["workload"], train["workload"]) == ("decode", "train")
  assert math.isclose(decode["prefill_s"] + 4 * decode["step_s"], decode["call_s"])
  assert math.isclose(decode["step_s"], decode["matmul_step_s"] + decode["attention_step_s"]
                      + decode["rest_step_s"])
  assert decode["matmul_step_s"] > 0 and decode["attention_step_s"] > 0
  assert math.isclose(decode["floor_s"], decode["prefill_s"] + 3 * decode["matmul_step_s"])
  assert 0 < train["matmul_share"] < 1 and train["matmul_thread_s"] > 0
  assert train["other_thread_s"] > 0 and train["top_other"]
  assert math.isclose(train["floor_s"], train["call_s"] * train["matmul_share"])
  hf = {r["workload"]: statistics.median(r["hf_times"]) for r in saved["rows"]}
  for r in (decode, train):
    assert r["hf_s"] == hf[r["workload"]]
    assert math.isclose(r["ratio_floor"], r["hf_s"] / r["floor_s"])
    assert r["goal"] == bench.TARGETS[("tiny", r["workload"])]
  header = "| " + " | ".join(bench_floor.COLUMNS) + " |"
  lines = printed.splitlines()
  body = lines[lines.index(header) + 2:lines.index(header) + 4]
  assert [_cells(l)[:2] for l in body] == [["tiny", "decode"], ["tiny", "train"]]
  assert all(len(_cells(l)) == len(bench_floor.COLUMNS) for l in body)


def test_floor_instruction_kinds_find_dots_inside_fusions():
  from si_jax.tools.bench import floor as bench_floor
  hlo = """HloModule m

%fused_dot (p0: f32[2,2], p1: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  %p1 = f32[2,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  ROOT %add.1 = f32[2,2]{1,0} add(%p0, %p0)
}

ENTRY %main (a: f32[2,2]) -> f32[2,2] {
  %a = f32[2,2]{1,0} parameter(0)
  %ynn_fusion.3 = f32[2,2]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot
  %add_fusion = f32[2,2]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fused_add
  %while.2 = f32[2,2]{1,0} while(%add_fusion), condition=%c, body=%b
  ROOT %dot.9 = f32[2,2]{1,0} dot(%while.2, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
  kinds = bench_floor._instruction_kinds(hlo)
  assert kinds["ynn_fusion.3"] == "matmul" and kinds["dot.9"] == "matmul"
  assert kinds["add_fusion"] == "other" and kinds["while.2"] == "control"
