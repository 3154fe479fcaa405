"""The package's import graph has no circles: no module imports one that imports it back,
directly or through others, counting function-local imports too (they hide the real graph but
still tie the modules together). Read from the source with `ast`; nothing is imported."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "spec_cascade"


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """module → the package modules it imports. `from pkg import sub` is an edge to the submodule
  `pkg.sub`; `from pkg import name` (not a module) an edge to `pkg` itself. A package's own
  __init__ running before its submodules is Python's doing, not an edge."""
  mods = _modules()
  graph = {m: set() for m in mods}
  for name, path in mods.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
        targets = subs if len(subs) == len(node.names) else [base] + subs
      else:
        continue
      graph[name] |= {t for t in targets if t in mods and t != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan, iterative)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph[child]))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          out.append(sorted(component))
  return out


def test_cycle_finder_finds_direct_and_indirect_circles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
  assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_local_and_relative_imports():
  graph = import_graph()
  # stages reads checkpoints inside a function; the decode bodies import sampling at the top.
  assert "spec_cascade.checkpoints" in graph["spec_cascade.stages"]
  assert "spec_cascade.sampling" in graph["spec_cascade.decoding.bodies"]
  assert "spec_cascade.data.tokenizer" in graph["spec_cascade.data.offline"]


def test_no_module_imports_one_that_imports_it_back():
  found = cycles(import_graph())
  assert not found, f"import circles: {found}"
