"""The package's import graph has no circles (issue 17): every import of an si_jax module,
lazy ones inside functions included, read from the source with `ast`."""

import ast
import os

import si_jax

ROOT = os.path.dirname(si_jax.__file__)


def _module(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(ROOT))[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph() -> dict[str, set[str]]:
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
      else:
        continue
      graph[mod].update(t for t in targets if t in files and t != mod)
  return graph


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
