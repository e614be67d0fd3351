"""si_jax: RL of LLM reasoning with supervision internalization, in JAX."""

__version__ = "0.1.0"
