"""`python -m si_jax.tools.launch`: the si-launch command."""

from si_jax.tools.launch import run

run()
