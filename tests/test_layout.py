"""The package's import graph (issue 17): no circles, and every import points down the floors

  core (models, data, verify and the top-level modules) -> rl -> si -> train -> cli, tools

Every import of an si_jax module counts, lazy ones inside functions included, and so does a
string constant that names one (a registry's `modules=`, a `python -m` command): read from the
source with `ast`."""

import ast
import os

import si_jax

ROOT = os.path.dirname(si_jax.__file__)


def _module(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph(strings: bool = False) -> dict[str, set[str]]:
  """{module: the si_jax modules it imports}, packages resolved to their modules where the
  import names one (`from si_jax.models import convert` -> si_jax.models.convert)."""
  files = {}
  for d, _, names in os.walk(ROOT):
    for n in names:
      if n.endswith(".py"):
        files[_module(os.path.join(d, n))] = os.path.join(d, n)
  graph: dict[str, set[str]] = {m: set() for m in files}
  for mod, path in files.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
        targets = [node.value]  # a module named by string: imported all the same
      else:
        continue
      graph[mod].update(t for t in targets if t in files and t != mod)
  return graph


# The floors, bottom up: a module may import its own floor and those below.
FLOORS = ("core", "rl", "si", "train", "top")
_FLOOR_OF_PACKAGE = {"models": "core", "data": "core", "verify": "core", "rl": "rl", "si": "si",
                     "train": "train", "cli": "top", "tools": "top"}


def floor(module: str) -> str:
  """The floor of `si_jax.<...>`: its subpackage's, or core for a top-level module."""
  parts = module.split(".")
  return _FLOOR_OF_PACKAGE.get(parts[1], "core") if len(parts) > 1 else "core"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """'a (floor) -> b (floor)' for every import of a higher floor's module."""
  rank = {f: i for i, f in enumerate(FLOORS)}
  return sorted(f"{m} ({floor(m)}) -> {t} ({floor(t)})" for m, ts in graph.items()
                if m != "si_jax" for t in ts if rank[floor(t)] > rank[floor(m)])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_checker_finds_a_circle_and_resolves_packages():
  assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  graph = import_graph()
  assert "si_jax.models.convert" in graph["si_jax.train.workdir"]  # lazy, inside a function
  assert "si_jax.models.convert" in graph["si_jax.cli.convert"]


def test_the_package_has_no_import_circles():
  assert circles(import_graph()) == []


def test_the_checker_sees_an_upward_import_and_a_module_named_by_string():
  graph = {"si_jax.sampling": {"si_jax.rl.rollout"}, "si_jax.rl.rollout": {"si_jax.sampling"}}
  assert upward_imports(graph) == ["si_jax.sampling (core) -> si_jax.rl.rollout (rl)"]
  assert "si_jax.si.judge" in import_graph(strings=True)["si_jax.si.audit"]  # Registry(modules=)
  assert all(p in _FLOOR_OF_PACKAGE for p in {m.split(".")[1] for m in import_graph()
                                              if m.count(".") >= 2})  # every folder has a floor


def test_every_import_points_down_the_floors():
  """Modules named by string count here (a registry's plug-ins import their registry back:
  that is the plug-in pattern, not a circle, so `circles` reads imports only)."""
  assert upward_imports(import_graph(strings=True)) == []
