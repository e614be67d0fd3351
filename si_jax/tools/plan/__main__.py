"""`python -m si_jax.tools.plan`: the si-plan command."""

from si_jax.tools.plan.cli import run

run()
