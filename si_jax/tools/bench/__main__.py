"""`python -m si_jax.tools.bench`: the si-bench command."""

from si_jax.tools.bench.cli import run

run()
