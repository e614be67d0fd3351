"""Named plug-ins: one `Registry` for tasks, credit functions and audit gates.

  TASKS = Registry("task", modules=("si_jax.data.arith", ...))

  @TASKS.register("arith", options={...})
  class ArithTask: ...

  TASKS.get("arith")          # the factory; an unknown name is a ValueError listing the known
  TASKS.names(); TASKS.info("arith")["options"]

`modules` are imported on the first lookup (their import registers the entries), so a registry
in a low layer never imports a higher one at import time; a module missing from the
installation is skipped, a missing dependency inside one is raised.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Sequence

__all__ = ["Registry"]


class Registry:
  """Name -> object (a class or a function) with per-entry info (a dict)."""

  def __init__(self, kind: str, *, field: str | None = None, modules: Sequence[str] = ()):
    """kind: what an entry is, for errors ("task"); field: the config field that names one,
    for errors ("config.rl.credit"); modules: imported before any lookup."""
    self.kind = kind
    self.field = field
    self._modules = tuple(modules)
    self._imported = False
    self._entries: dict[str, Any] = {}
    self._info: dict[str, dict[str, Any]] = {}

  def register(self, name: str, **info) -> Callable[[Any], Any]:
    """Decorator: registers the decorated object under `name` with `info`. Registering a
    different object under a taken name is an error (the same one again is not: a re-import)."""
    def deco(obj):
      self.add(name, obj, **info)
      return obj
    return deco

  def add(self, name: str, obj: Any, **info) -> None:
    if name in self._entries:
      if self._entries[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      return  # a module imported twice (by path and by name): keep the first info
    self._entries[name] = obj
    self._info[name] = dict(info)

  def _import_modules(self) -> None:
    if self._imported:
      return
    for mod in self._modules:
      try:
        importlib.import_module(mod)
      except ModuleNotFoundError as e:
        if e.name != mod:  # a real missing dependency inside the module: surface it
          raise
    self._imported = True

  def names(self) -> list[str]:
    self._import_modules()
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    self._import_modules()
    return name in self._entries

  def get(self, name: str) -> Any:
    """The entry called `name`; a ValueError naming the field, the known names and the closest
    one otherwise."""
    self._import_modules()
    if name not in self._entries:
      close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.6)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"{self.field or self.kind} must be one of {sorted(self._entries)}, got "
                       f"{name!r}{hint}")
    return self._entries[name]

  def info(self, name: str) -> dict[str, Any]:
    self.get(name)
    return self._info[name]
