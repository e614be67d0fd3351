"""si-sweep: runs a grid of si-train config overrides and tabulates the results over seeds.

values.py reads values as si-train's flags do; spec.py is the sweep (its file, axes, runs and
their names); check.py checks every run's config before anything starts; launcher.py builds the
command of one run (through si_jax/tools/launch/); root.py is the layout of a sweep's root;
execute.py starts or resumes the runs; report.py collects their results into the table over
seeds; cli.py is the command line (usage there).
"""

from si_jax.tools.sweep.check import load_config, validate
from si_jax.tools.sweep.cli import main, run
from si_jax.tools.sweep.launcher import Launcher, train_args
from si_jax.tools.sweep.report import default_metrics, lookup, markdown_table, summary_table
from si_jax.tools.sweep.root import check_root
from si_jax.tools.sweep.spec import make_sweep
from si_jax.tools.sweep.values import format_value, parse_value, split_values, value_token

__all__ = [
    "Launcher", "check_root", "default_metrics", "format_value", "load_config", "lookup", "main",
    "make_sweep", "markdown_table", "parse_value", "run", "split_values", "summary_table",
    "train_args", "validate", "value_token",
]
