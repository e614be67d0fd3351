"""`python -m si_jax.tools.bench`: the si-bench command."""

from si_jax.tools.bench import run

run()
