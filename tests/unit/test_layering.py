"""The layering, machine-checked: only kube/ talks to Kubernetes, only handlers.py to kopf, and
the operator's modules import each other without cycles (core's purity: test_core_is_pure.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import modelrollout

PKG = Path(modelrollout.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth (a function-level import is still a dependency)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return names


GRAPH = {_module(p): imports(p) for p in PKG.rglob("*.py")}


def test_only_kube_imports_the_kubernetes_client_and_only_handlers_import_kopf() -> None:
    for mod, names in GRAPH.items():
        tops = {n.split(".")[0] for n in names}
        if "kubernetes" in tops:
            assert mod.startswith("modelrollout.kube."), f"{mod} imports kubernetes"
        if "kopf" in tops:
            assert mod == "modelrollout.handlers", f"{mod} imports kopf"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, set())):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (found := visit(n, [*path, n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_no_import_cycles() -> None:
    own = {m: {n for n in names if n in GRAPH and n != m} for m, names in GRAPH.items()}
    assert find_cycle(own) is None, " -> ".join(find_cycle(own) or [])
    # the check itself finds one (cli.py and evaluate.py imported each other before outputs.py)
    assert find_cycle({"cli": {"evaluate"}, "evaluate": {"outputs", "cli"}, "outputs": set()}) == [
        "cli", "evaluate", "cli"]


def test_the_checks_see_the_whole_package() -> None:
    assert len(GRAPH) >= 30 and "modelrollout.controller.reconcile" in GRAPH
    assert "modelrollout.kube.api" in GRAPH["modelrollout.controller.act"]


def test_the_controller_reads_in_observe_and_writes_in_act() -> None:
    """One direction for data: observe reads, act writes; reconcile only wires them to the core."""
    def calls(mod: str) -> set[str]:
        tree = ast.parse((PKG / "controller" / f"{mod}.py").read_text())
        return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name | ast.Attribute) and ast.unparse(n.value).endswith("kube")}
    writes = {"apply", "delete", "replace_template", "patch_status", "event", "annotate_rollout", "patch_route"}
    assert not calls("observe") & writes, calls("observe")
    assert calls("act") & writes
    assert not calls("reconcile") & writes, calls("reconcile")


def test_status_has_one_writer() -> None:
    writers = {_module(p) for p in PKG.rglob("*.py") if "patch_status" in p.read_text()}
    assert writers == {"modelrollout.kube.api", "modelrollout.status"}, writers
