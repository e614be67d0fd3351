"""Paper-scale math: Qwen3 (0.6B-32B) trained on DeepMath-103K with GSPO or SI.

  si-train --config experiments/configs/qwen3_math.py:8b --workdir runs/math_8b_si
  si-train --config experiments/configs/qwen3_math.py:8b,gspo --workdir runs/math_8b_gspo
  si-train --config experiments/configs/qwen3_math.py:smoke --workdir /tmp/smoke   # seconds

The argument is `<size>[,<method>]`: size 0.6b | 1.7b | 4b | 8b | 14b | 32b | smoke, method
si (default) | gspo; `experiments/configs/_qwen3.py` has the per-size defaults and why.
GSPO and SI differ only in `rl.credit`. The model is `$SI_CHECKPOINTS/Qwen3-<SIZE>` (an HF
directory with its tokenizer; `--config.model.init_from=DIR` for another one).

Data (nothing is downloaded): `$SI_DATA/deepmath` (default `data/deepmath`) holds the split
files the DeepMath builder reads: `train` (RL prompts) and `dev` (held-out problems for the
evaluation during training). `python experiments/prepare_paper_data.py deepmath --src
<the published parquet shards> --out $SI_DATA/deepmath` writes both, holding out 500
problems. Built datasets go to `$SI_DATA/tfds`.

The paper's table (AIME25, HMMT25 avg@32 of the final checkpoints, with LiveCodeBench v6 from
`qwen3_code.py` runs) comes from `experiments/paper_table.py`; sweeps over method and SI
variant are `experiments/sweeps/qwen3_math.py` and `qwen3_math_si_variants.py`.

No repair-mode cold start by default (`sft.steps=0`): the instruct model is asked to repair
zero-shot with si_jax's repair prompt. To cold-start it, set `sft.steps`, `sft.data_path`
(policy traces) and `sft.repair_data_path` (error -> repair pairs).
"""

from si_jax import configs


def get_config(arg=None):
  q = configs.load_sibling(__file__, "_qwen3")
  size, method = q.parse_arg(arg, "qwen3_math")
  c = q.base(size, method)
  c.task.name = "deepmath"
  c.task.kwargs = dict(manual_dir=q.data_path("deepmath"), data_dir=q.data_path("tfds"),
                       num_workers=1 if size == "smoke" else 16)
  c.task.train_split = "train"
  c.task.eval_split = "dev"
  return configs.finalize(c)
