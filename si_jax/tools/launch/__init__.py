"""si-launch: starts si-train here, on a SLURM GPU allocation or on a Cloud TPU pod slice.

One module per job: common (what every launcher shares: si-train's multi-host environment, the
preemption exit code, `Command`), local (N processes here), slurm (one sbatch job), tpu_pod
(every worker of a Cloud TPU VM slice, through gcloud) and cli (the command line, --dry_run,
`run()`). This package re-exports the names the rest of si_jax and the tests use.

None of these has run on a real pod or cluster from this repository (no such machine in CI);
the tests check the exact commands and run the local launcher for real.
"""

from si_jax.tools.launch.cli import main
from si_jax.tools.launch.cli import plan
from si_jax.tools.launch.cli import run
from si_jax.tools.launch.common import ENV_COORDINATOR
from si_jax.tools.launch.common import ENV_ENABLE
from si_jax.tools.launch.common import ENV_NUM_PROCESSES
from si_jax.tools.launch.common import ENV_PROCESS_ID
from si_jax.tools.launch.common import GPU_MEM_FRACTION
from si_jax.tools.launch.common import MEM_FRACTION_ENV
from si_jax.tools.launch.common import PREEMPTED
from si_jax.tools.launch.common import LaunchError
from si_jax.tools.launch.local import local_commands
from si_jax.tools.launch.slurm import slurm_script
from si_jax.tools.launch.tpu_pod import PYTHON_FLOOR
from si_jax.tools.launch.tpu_pod import python_check
from si_jax.tools.launch.tpu_pod import tpu_hosts

__all__ = ["ENV_COORDINATOR", "ENV_ENABLE", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID",
           "GPU_MEM_FRACTION", "MEM_FRACTION_ENV", "PREEMPTED", "PYTHON_FLOOR", "LaunchError",
           "local_commands", "main", "plan", "python_check", "run", "slurm_script", "tpu_hosts"]
