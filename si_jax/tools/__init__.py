"""Tools around training: benchmarks (bench), the memory planner (plan), launchers (launch),
hyperparameter sweeps (sweep). Each is a console script; none is imported by training."""
