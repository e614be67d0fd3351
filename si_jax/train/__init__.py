"""Training programs: the RL trainer, the SFT cold start, evaluation, and the run directory."""
