"""Paper-scale code: Qwen3 (0.6B-32B) trained on LiveCodeBench-style problems with GSPO or SI.

  si-train --config experiments/configs/qwen3_code.py:8b --workdir runs/code_8b_si
  si-train --config experiments/configs/qwen3_code.py:8b,gspo --workdir runs/code_8b_gspo

The argument is `<size>[,<method>]` as in `qwen3_math.py` (sizes 0.6b ... 32b and smoke,
methods si | gspo; per-size defaults in `experiments/configs/_qwen3.py`).

Reward: the fraction of a problem's tests the program passes, run in the sandbox; a rollout
passing all of them is correct (`rl.success_threshold=1.0`), the anchor SI repairs toward.

Data (nothing is downloaded): `$SI_DATA/livecodebench` (default `data/livecodebench`) holds
split files in the LiveCodeBench builder's columns: `train` (RL problems), `dev` (held out,
evaluated during training) and `v6` (the final benchmark, never trained on).
`python experiments/prepare_paper_data.py livecodebench --src test.jsonl ... test6.jsonl
--out $SI_DATA/livecodebench` splits the published release files by contest date: problems
from 2025-02-01 on are `v6`, earlier ones `train` minus 64 `dev` problems. The paper trains on
OpenCodeReasoning; any problems with tests converted to these columns can be added as more
`train-<name>.jsonl` shards.
"""

from si_jax import configs


def get_config(arg=None):
  q = configs.load_sibling(__file__, "_qwen3")
  size, method = q.parse_arg(arg, "qwen3_code")
  c = q.base(size, method)
  c.task.name = "livecodebench"
  c.task.kwargs = dict(manual_dir=q.data_path("livecodebench"), data_dir=q.data_path("tfds"),
                       tests="all",
                       verifier_options=dict(max_concurrency=1 if size == "smoke" else 16))
  c.task.train_split = "train"
  c.task.eval_split = "dev"
  return configs.finalize(c)
