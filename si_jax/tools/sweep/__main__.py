"""`python -m si_jax.tools.sweep`: the si-sweep command."""

from si_jax.tools.sweep import run

run()
