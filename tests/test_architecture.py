"""The import graph of hiprouter/ has no cycles and its arrows run one way.

Every `import` and `from ... import` in hiprouter/ counts, at module level or inside a
function (a lazy import is still a dependency), and so does the CLI's import of every
command module (`cli._register`). Pipeline kinds found through entry points or `plugins:`
do not. The layers, lowest first; a module may import modules of its own layer or of a
lower one, never of a higher one:

    foundation        hiprouter (package), config, schema, db, audit, logs, metrics (the
                      Prometheus registry), findings (the findings model), resources
                      (shipped files), fileperms (the modes of the files the server
                      creates), posture (warnings about an insecure configuration), and
                      router.flow.rules
                      (the rule grammar is part of the configuration model: config imports
                      `Rule`; rules imports nothing from hiprouter)
    models, reports   inference, report
    pipelines         pipelines (the contract, the registry, the runner, the kinds)
    lifecycle         lifecycle (de-identification, labels from reports, the model
                      registry, agreement and drift figures: used offline and by serve)
    offline tools     synth, training
    router            router.net (the DICOM network side), router.flow (the flow side)
    service           service (the composition root), demo, status, pull (dataset pull:
                      the PACS side and the export), web (metrics and status page over
                      HTTP)
    commands          cli, commands

Inside the router layer net and flow are independent, with two exceptions:
`net.receive -> flow.studies` (each stored instance is counted for its study in the
transaction that records it) and `flow.dispatch -> net.tls` (outbound associations use
the same TLS contexts as the SCP). `flow.queue` is a leaf (configuration, database,
logging and schema only), and only `flow.studies` changes `Study.state`. Nothing in the
production path imports the offline tools.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hiprouter"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("hiprouter", "hiprouter.config", "hiprouter.schema", "hiprouter.db",
                    "hiprouter.audit", "hiprouter.logs", "hiprouter.metrics",
                    "hiprouter.findings",
                    "hiprouter.resources", "hiprouter.fileperms", "hiprouter.posture",
                    "hiprouter.router.flow.rules")),
    ("models, reports", ("hiprouter.inference", "hiprouter.report")),
    ("pipelines", ("hiprouter.pipelines",)),
    ("lifecycle", ("hiprouter.lifecycle",)),
    ("offline tools", ("hiprouter.synth", "hiprouter.training")),
    ("router", ("hiprouter.router", "hiprouter.router.net", "hiprouter.router.flow")),
    ("service", ("hiprouter.service", "hiprouter.demo", "hiprouter.status", "hiprouter.pull",
                 "hiprouter.web")),
    ("commands", ("hiprouter.cli", "hiprouter.commands")),
]
NET, FLOW = "hiprouter.router.net", "hiprouter.router.flow"
NET_FLOW_EDGES = {
    ("hiprouter.router.net.receive", "hiprouter.router.flow.studies"),
    ("hiprouter.router.flow.dispatch", "hiprouter.router.net.tls"),
}
QUEUE_MAY_IMPORT = {"hiprouter.config", "hiprouter.db", "hiprouter.logs", "hiprouter.schema"}
DYNAMIC_IMPORTS = {"hiprouter.cli": "hiprouter.commands"}
"""module -> package whose every module it imports with importlib."""
OFFLINE = ("hiprouter.synth", "hiprouter.training")
OFFLINE_USERS = ("hiprouter.demo", "hiprouter.commands", *OFFLINE)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """The hiprouter modules `module` imports (a name imported from a package counts as
    its submodule when there is one)."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in _modules() else base)
    if module in DYNAMIC_IMPORTS:
        found.update(m for m in _modules() if _within(m, DYNAMIC_IMPORTS[module]))
    return {name for name in found if name in _modules() and name != module}


@cache
def _graph() -> dict[str, frozenset[str]]:
    return {module: frozenset(_imports(module)) for module in _modules()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int:
    best, layer = "", -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "hiprouter"
            hit = module == prefix if exact_only else _within(module, prefix)
            if hit and len(prefix) > len(best):
                best, layer = prefix, index
    assert layer >= 0, f"{module} is in no layer: add it to LAYERS"
    return layer


def _cycle() -> list[str] | None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = _graph()
    assert "hiprouter.router.flow.queue" in graph["hiprouter.router.flow.worker"]
    assert "hiprouter.router.flow.studies" in graph["hiprouter.router.net.receive"]
    assert "hiprouter.report.text" in graph["hiprouter.service"]  # function-level import
    assert "hiprouter.router.flow.rules" in graph["hiprouter.config"]
    assert "hiprouter.commands.node" in graph["hiprouter.cli"]  # importlib, by name


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_never_point_to_a_higher_layer() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) -> {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _graph().items() for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_net_and_flow_meet_only_where_allowed() -> None:
    crossing = {
        (module, target) for module, targets in _graph().items() for target in targets
        if (_within(module, NET) and _within(target, FLOW))
        or (_within(module, FLOW) and _within(target, NET))
    }
    assert crossing - NET_FLOW_EDGES == set()


def test_queue_is_a_leaf_and_rules_import_nothing_from_hiprouter() -> None:
    assert _graph()["hiprouter.router.flow.queue"] <= QUEUE_MAY_IMPORT
    assert _graph()["hiprouter.router.flow.rules"] == set()


def test_only_the_demo_and_commands_use_the_offline_tools() -> None:
    users = {
        module for module, targets in _graph().items()
        if any(_within(t, p) for t in targets for p in OFFLINE)
        and not any(_within(module, p) for p in OFFLINE_USERS)
    }
    assert users == set()


def test_only_studies_changes_study_state() -> None:
    """A textual check: Study rows are inserted or updated, or `study.state` assigned, only
    in router/flow/studies.py."""
    pattern = re.compile(r"(insert|update)\(Study\)|\bstudy\.state\s*=(?!=)")
    writers = sorted(
        module for module, path in _modules().items()
        if pattern.search(path.read_text()) and module != "hiprouter.router.flow.studies"
    )
    assert writers == []
