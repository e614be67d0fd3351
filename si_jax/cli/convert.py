"""`si-convert`: HF model directories <-> si_jax params directories; the command line of
`si_jax/models/convert.py` (the library, with the directory layout) and `workdir.load_run`
(a si-train checkpoint)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

from si_jax.cli.console import console
from si_jax.models.config import DTYPES
from si_jax.models.convert import hf_to_si, si_to_hf


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="si-convert", description=__doc__.split(";")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--to", required=True, choices=("si", "hf"),
                 help="si: HF dir -> params dir; hf: params dir -> HF dir")
  p.add_argument("--hf_dir", help="HF model directory to import (--to=si)")
  p.add_argument("--from_params", help="params directory to export (--to=hf)")
  p.add_argument("--from_workdir", help="si-train workdir whose checkpoint to export (--to=hf)")
  p.add_argument("--step", type=int, default=None, help="with --from_workdir (default: latest)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--dtype", choices=sorted(DTYPES),
                 help="dtype of the written params (default: the source's own: config.json's "
                      "dtype for --to=si, the saved params' for --to=hf)")
  p.add_argument("--tokenizer_dir", help="tokenizer files to copy (--to=hf)")
  p.add_argument("--max_shard_size", default="5GB", help="safetensors shard size (--to=hf)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """si-convert; returns the exit code. A source that cannot be read as asked (a missing
  directory, a checkpoint that does not verify, a layout that does not match) is one line on
  stderr, `si-convert: error: ...`, and exit code 2 (SI_TRACEBACK=1 shows the traceback)."""
  try:
    return _main(argv)
  except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
    if os.environ.get("SI_TRACEBACK") == "1":
      raise
    print(f"si-convert: error: {str(e).strip(chr(39) + chr(34))}", file=sys.stderr, flush=True)
    return 2


def _main(argv: Sequence[str] | None = None) -> int:
  p = _parser()
  args = p.parse_args(argv)
  if args.to == "si":
    if not args.hf_dir or args.from_params:
      p.error("--to=si needs --hf_dir (and no --from_params)")
    cfg = hf_to_si(args.hf_dir, args.out, dtype=args.dtype)
  elif args.from_workdir:
    if args.from_params or args.hf_dir:
      p.error("--from_workdir excludes --from_params and --hf_dir")
    from si_jax.train import workdir  # pylint: disable=g-import-not-at-top
    from si_jax.models import hf  # pylint: disable=g-import-not-at-top
    run = workdir.load_run(args.from_workdir, step=args.step)
    cfg = run["model_cfg"]
    tokenizer = run["tokenizer"]
    ids = dict(eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    # dtype None: the checkpoint's params as trained.
    hf.save_hf(run["params"], cfg, args.out, dtype=args.dtype,
               tokenizer_dir=args.tokenizer_dir or tokenizer.path or None,
               max_shard_size=args.max_shard_size, extra_config=ids,
               generation_config=hf.generation_config(tokenizer.stop_ids, tokenizer.pad_id))
  else:
    if not args.from_params or args.hf_dir:
      p.error("--to=hf needs --from_params or --from_workdir (and no --hf_dir)")
    cfg = si_to_hf(args.from_params, args.out, dtype=args.dtype,
                   tokenizer_dir=args.tokenizer_dir, max_shard_size=args.max_shard_size)
  print(f"wrote {args.out}: {cfg.family}, {cfg.num_layers} layers, d={cfg.hidden_size}, "
        f"{cfg.num_params() / 1e6:.2f}M params")
  return 0


def run() -> NoReturn:
  """Console-script entry point (`si-convert`)."""
  console(main, "si-convert")


if __name__ == "__main__":
  run()
