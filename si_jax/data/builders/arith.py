"""Builder for the synthetic arithmetic task (si_jax.data.arith): generated, no manual dir.

One tfds BuilderConfig per ArithConfig; its name is a digest of the ArithConfig's fields, so
datasets of different configs never share a directory:

    load_split("arith", "train", data_dir, config=ArithConfig(num_steps=3, modulus=7))

Rows hold the Example of `ArithDataset(config, split)[i]` (id, prompt, answer) and the problem
(start, ops, operands, modulus (0 = none), values, num_steps, solution); `row_to_example`
rebuilds the Example exactly. A multi-part config (`parts` = m >= 2) stores answer and start
per part ([m]), ops, operands and values of all parts one after another, num_steps as their
total and part_steps [m] (each part's operations) to cut them apart again. Bump VERSION when
the generator in si_jax/data/arith/ changes what it draws.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from typing import Any, Iterator, Mapping

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from si_jax.data import arith
from si_jax.data import tasks
from si_jax.data.builders import quiet

__all__ = ["ArithBuilderConfig", "SiArith", "builder_config_for", "row_to_example"]

_INT64 = np.iinfo(np.int64)


@dataclasses.dataclass(eq=False)
class ArithBuilderConfig(tfds.core.BuilderConfig):
  """A tfds config wrapping an ArithConfig (use `builder_config_for` to make one)."""

  arith: arith.ArithConfig = dataclasses.field(default_factory=arith.ArithConfig)


def _config_fields(config: arith.ArithConfig) -> dict[str, Any]:
  fields = {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(config).items()}
  if fields["parts"] == 1:
    del fields["parts"]  # added later: single-chain configs keep the directory names they had
  return fields


def _make_config(config: arith.ArithConfig) -> ArithBuilderConfig:
  fields = json.dumps(_config_fields(config), sort_keys=True)
  digest = hashlib.sha256(fields.encode()).hexdigest()[:12]
  return ArithBuilderConfig(name=f"cfg_{digest}", description=f"ArithConfig {fields}",
                            arith=config)


_DEFAULT_CONFIG = _make_config(arith.ArithConfig())


def builder_config_for(config: "arith.ArithConfig | tfds.core.BuilderConfig | str | None"):
  """What to pass as the builder's `config=`: an ArithConfig becomes its ArithBuilderConfig."""
  if isinstance(config, arith.ArithConfig):
    made = _make_config(config)
    return _DEFAULT_CONFIG if made.name == _DEFAULT_CONFIG.name else made
  return config


class SiArith(quiet.QuietBuild, tfds.core.GeneratorBasedBuilder):
  """Synthetic multi-step arithmetic (si_jax.data.arith), generated from an ArithConfig."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [_DEFAULT_CONFIG]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # See base.ManualBuilder.code_path: avoids tfds' undeclared importlib_resources import.
    return epath.Path(inspect.getfile(cls))

  @staticmethod
  def builder_config_for(config):
    return builder_config_for(config)

  def _info(self) -> tfds.core.DatasetInfo:
    ints = tfds.features.Sequence(np.int64)
    # Multi-part: answer and start per part, part_steps to cut the flat ops / operands / values.
    multi = {"answer": ints, "start": ints, "part_steps": ints} if self._multi_part else {}
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__class__.__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "answer": np.int64,
            "start": np.int64,
            "ops": tfds.features.Sequence(tfds.features.Text()),
            "operands": ints,
            "modulus": tfds.features.Scalar(np.int64, doc="0: no modulus"),
            "values": ints,
            "num_steps": np.int32,
            "solution": tfds.features.Text(),
            **multi,
        }),
        disable_shuffling=True,  # index i = ArithDataset(config, split)[i]
    )

  @property
  def _multi_part(self) -> bool:
    return self.builder_config.arith.parts > 1

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # generated: nothing to read
    return {split: self._generate_examples(split) for split in arith.SPLITS
            if self.builder_config.arith.size(split) > 0}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    dataset = arith.ArithDataset(self.builder_config.arith, split)
    for i in range(len(dataset)):
      ex = dataset[i]
      row = {
          "id": ex.id, "prompt": ex.prompt, "answer": ex.answer,
          "start": ex.meta["start"], "ops": list(ex.meta["ops"]),
          "operands": list(ex.meta["operands"]), "modulus": ex.meta["modulus"] or 0,
          "values": list(ex.meta["values"]), "num_steps": ex.meta["num_steps"],
          "solution": ex.meta["solution"],
      } if not self._multi_part else _multi_part_row(ex)
      for key in ("answer", "start", "operands", "values"):
        vals = row[key] if isinstance(row[key], list) else [row[key]]
        if any(not _INT64.min <= v <= _INT64.max for v in vals):
          raise ValueError(f"arith builder: {ex.id} ({ex.prompt!r}) has {key} outside int64 "
                           f"({row[key]}); use a modulus or smaller operands/chains")
      yield i, row


def _multi_part_row(ex: tasks.Example) -> dict[str, Any]:
  parts = ex.meta["parts"]
  flat = lambda key: [x for part in parts for x in part[key]]
  return {
      "id": ex.id, "prompt": ex.prompt, "answer": list(ex.answer),
      "start": [part["start"] for part in parts], "ops": flat("ops"),
      "operands": flat("operands"), "modulus": ex.meta["modulus"] or 0, "values": flat("values"),
      "num_steps": ex.meta["num_steps"], "part_steps": [part["num_steps"] for part in parts],
      "solution": ex.meta["solution"],
  }


def _multi_part_example(row: Mapping[str, Any]) -> tasks.Example:
  modulus = row["modulus"] or None
  parts, op_at, value_at = [], 0, 0
  for start, n in zip(row["start"], row["part_steps"]):
    parts.append({"start": start, "ops": tuple(row["ops"][op_at:op_at + n]),
                  "operands": tuple(row["operands"][op_at:op_at + n]), "modulus": modulus,
                  "values": tuple(row["values"][value_at:value_at + n + 1]), "num_steps": n})
    op_at, value_at = op_at + n, value_at + n + 1
  meta = {"parts": tuple(parts), "modulus": modulus, "num_steps": row["num_steps"],
          "solution": row["solution"]}
  return tasks.Example(id=row["id"], prompt=row["prompt"], answer=tuple(row["answer"]), meta=meta)


def row_to_example(row: Mapping[str, Any]) -> tasks.Example:
  """The arith Example a built row holds (equal to ArithDataset's)."""
  if "part_steps" in row:
    return _multi_part_example(row)
  meta = {"start": row["start"], "ops": tuple(row["ops"]), "operands": tuple(row["operands"]),
          "modulus": row["modulus"] or None, "values": tuple(row["values"]),
          "num_steps": row["num_steps"], "solution": row["solution"]}
  return tasks.Example(id=row["id"], prompt=row["prompt"], answer=row["answer"], meta=meta)
