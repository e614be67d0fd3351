"""LoRA adapters on the decoder's projection kernels, as pure functions over param pytrees.

With `config.model.lora.rank = r > 0` a run trains adapters and keeps the model's own params
(the *base*) frozen. For each target kernel W [L, d_in, d_out] (layers stacked, kernels stored
[in, out] as in `transformer.param_shapes`; attention heads are flattened into the kernels,
e.g. q [L, d, H*hd], o [L, H*hd, d]) there is an A [L, d_in, r] and a B [L, r, d_out], and the
model that runs is the *merged* one:

    W' = W + (alpha / r) * A @ B        (per layer)

Adapters tree: {"layers": {target: {"a": A, "b": B}}}. A starts random with the fan-in scale
(normal / sqrt(d_in)) and B at zero, so the merged model is the base, bitwise, at the start.
Adapters are float32 whatever the base's dtype; W' is computed in float32 and cast to W's
dtype. `merge` is called inside the jitted loss (gradients reach only A and B) and, outside
it, once per set of adapters for everything that needs the policy itself (sampler, log-prob
recomputation, evaluation, SI's repairs).

Sharding: A [layers, d_in, r] is split like W's input dim and B [layers, r, d_out] like its
output dim (rules from `si_jax.sharding`); the rank dim is replicated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from si_jax.models import transformer
from si_jax.models.config import ModelConfig

Params = dict[str, Any]
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the kernels LoRA may adapt


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r >= 0 (0: off), alpha > 0 (the update is scaled by alpha / r), targets: names from
  `TARGETS`. Frozen and hashable: a static argument of `jax.jit`. Defaults live in the config
  schema (`si_jax.configs`, model.lora)."""

  rank: int
  alpha: float
  targets: tuple[str, ...]

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
      raise ValueError(f"rank must be an int >= 0 (0 = LoRA off), got {self.rank!r}")
    if (not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool)
        or not self.alpha > 0):
      raise ValueError(f"alpha must be a number > 0, got {self.alpha!r}")
    bad = [t for t in self.targets if t not in TARGETS]
    if bad or not self.targets or len(set(self.targets)) != len(self.targets):
      raise ValueError(f"targets must be distinct names from {list(TARGETS)} (at least one), "
                       f"got {list(self.targets)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def from_config(lora_cfg) -> LoraConfig | None:
  """The LoraConfig of `config.model.lora` (a ConfigDict or dict), validated; None when the
  field is absent (workdirs written before it existed) or rank is 0."""
  if lora_cfg is None:
    return None
  get = lora_cfg.get if hasattr(lora_cfg, "get") else lambda k: getattr(lora_cfg, k)
  lc = LoraConfig(rank=get("rank"), alpha=get("alpha"), targets=tuple(get("targets")))
  return lc if lc.rank else None


def adapter_shapes(cfg: ModelConfig, lc: LoraConfig) -> Params:
  """Shapes of the adapters of `cfg`'s target kernels (the tree of `init`)."""
  kernels = transformer.param_shapes(cfg)["layers"]
  out = {}
  for name in lc.targets:
    L, d_in, d_out = kernels[name]
    out[name] = {"a": (L, d_in, lc.rank), "b": (L, lc.rank, d_out)}
  return {"layers": out}


def adapter_axes(cfg: ModelConfig, lc: LoraConfig) -> Params:
  """Logical axes of the adapters: A like its kernel's input dim, B like its output dim."""
  kernels = transformer.param_axes(cfg)["layers"]
  out = {}
  for name in lc.targets:
    layers, ax_in, ax_out = kernels[name]
    out[name] = {"a": (layers, ax_in, None), "b": (layers, None, ax_out)}
  return {"layers": out}


def adapter_shardings(cfg: ModelConfig, lc: LoraConfig, mesh, rules=None) -> Params:
  """Pytree of NamedSharding matching `init(cfg, lc, ...)`."""
  from si_jax import sharding as shd  # local: si_jax.sharding imports the model package
  rules = shd.DEFAULT_RULES if rules is None else rules
  return jax.tree.map(lambda a, s: shd.named(mesh, a, s, rules), adapter_axes(cfg, lc),
                      adapter_shapes(cfg, lc), is_leaf=lambda x: isinstance(x, tuple))


def init(cfg: ModelConfig, lc: LoraConfig, key: jax.Array) -> Params:
  """float32 adapters: A ~ normal / sqrt(d_in), B = 0 (the merged model equals the base)."""
  shapes = adapter_shapes(cfg, lc)["layers"]
  keys = jax.random.split(key, len(lc.targets))
  out = {}
  for name, k in zip(lc.targets, keys):
    a_shape, b_shape = shapes[name]["a"], shapes[name]["b"]
    a = jax.random.normal(k, a_shape, jnp.float32) / math.sqrt(a_shape[1])
    out[name] = {"a": a, "b": jnp.zeros(b_shape, jnp.float32)}
  return {"layers": out}


def init_sharded(cfg: ModelConfig, lc: LoraConfig, mesh, key: jax.Array) -> Params:
  """`init` created directly in the adapters' shardings."""
  fn = jax.jit(init, static_argnums=(0, 1), out_shardings=adapter_shardings(cfg, lc, mesh))
  return fn(cfg, lc, key)


def delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """scale * A @ B per layer: a [L, d_in, r], b [L, r, d_out] -> [L, d_in, d_out] float32."""
  return scale * jnp.einsum("lir,lro->lio", a.astype(jnp.float32), b.astype(jnp.float32),
                            precision=jax.lax.Precision.HIGHEST)


def merge(base: Params, adapters: Params, lc: LoraConfig) -> Params:
  """The full params the model runs: each adapted kernel W [L, d_in, d_out] becomes
  W + (alpha / r) * A @ B (in float32, cast back to W's dtype); every other param is the
  base's own array. Differentiable in both arguments."""
  layers = dict(base["layers"])
  for name, ab in adapters["layers"].items():
    w, a, b = layers.get(name), ab["a"], ab["b"]
    if w is None or (*a.shape[:2], b.shape[2]) != w.shape or a.shape[2] != b.shape[1]:
      raise ValueError(f"lora.merge: adapter {name!r} (A {a.shape}, B {b.shape}) does not fit "
                       f"the base kernel ({None if w is None else w.shape})")
    layers[name] = (w.astype(jnp.float32) + delta(a, b, lc.scale)).astype(w.dtype)
  return {**base, "layers": layers}


def make_merge_fn(lc: LoraConfig, param_shardings):
  """`merge` jitted: (base, adapters) -> full params placed in `param_shardings` (those of
  the base, e.g. `sharding.param_shardings(cfg, mesh)`, which the sampler expects)."""
  return jax.jit(lambda base, adapters: merge(base, adapters, lc),
                 out_shardings=param_shardings)

