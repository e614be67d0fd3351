#!/usr/bin/env bash
# Same as `si-launch local ARGS` (si_jax/tools/launch/; launch/README.md), for a checkout without the
# console script on PATH.  --dry_run prints the exact commands and runs nothing.
exec python -m si_jax.tools.launch local "$@"
