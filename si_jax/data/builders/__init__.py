"""tfds builders for si_jax's datasets, written as array_record and read without TensorFlow.

`BUILDERS` maps the short dataset names used by tasks and configs to builder classes; read
splits with `si_jax.data.sources.load_split`, which builds on first use.
"""

from si_jax.data.builders.arith import SiArith
from si_jax.data.builders.base import ManualBuilder
from si_jax.data.builders.livecodebench import SiLivecodebench
from si_jax.data.builders.math_sets import SiAime
from si_jax.data.builders.math_sets import SiDeepmath
from si_jax.data.builders.math_sets import SiGsm8k
from si_jax.data.builders.math_sets import SiHmmt
from si_jax.data.builders.math_sets import SiMath
from si_jax.data.builders.math_sets import SiMath500
from si_jax.data.builders.records import RecordError

BUILDERS = {
    "gsm8k": SiGsm8k,
    "math": SiMath,
    "math500": SiMath500,
    "deepmath": SiDeepmath,
    "aime": SiAime,
    "hmmt": SiHmmt,
    "livecodebench": SiLivecodebench,
    "arith": SiArith,
}

__all__ = ["BUILDERS", "ManualBuilder", "RecordError", "SiAime", "SiArith", "SiDeepmath", "SiGsm8k",
           "SiHmmt", "SiLivecodebench", "SiMath", "SiMath500"]
