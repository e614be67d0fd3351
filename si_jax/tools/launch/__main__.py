"""`python -m si_jax.tools.launch`: the si-launch command."""

from si_jax.tools.launch.cli import run

run()
