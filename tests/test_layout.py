"""The shape of the tree, as its imports draw it: the rules `docs/ARCHITECTURE.md` states, checked on every run.

- `core` imports neither process's package nor a provider; a provider imports only `core`.
- The gateway never imports the service's modules, and the service never imports the gateway's.
- Only the composition roots import a provider package, and outside the provider (and the simulator, tests and
  benchmarks) the word Xsolla appears in comments and docstrings only, except in those composition roots.
- No import cycle between modules at run time; no hand-written module over the size of one concept.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "providers", "server", "webhook_gateway", "xsolla_simulator", "tools")
FIRST_PARTY = (*PACKAGES, "entitlements", "tests", "bench")
#: The modules that choose the provider (each process's `app.py` and `__main__.py`, and the tools that compose
#: both processes): the only ones outside `providers/` allowed to import it or to name it in code.
COMPOSITION_ROOTS = frozenset(
    {
        "server/app.py",
        "server/__main__.py",
        "webhook_gateway/app.py",
        "webhook_gateway/__main__.py",
        "tools/devstack.py",
        "tools/demo.py",
    }
)
MAX_MODULE_LINES = 450


def source_files() -> Iterator[Path]:
    """Every hand-written module of the product (the generated stubs, tests and benchmarks left out)."""
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))
    for path in sorted((ROOT / "clients" / "python" / "entitlements").rglob("*.py")):
        if "v1" not in path.relative_to(ROOT).parts:
            yield path


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[:2] == ["clients", "python"]:
        parts = parts[2:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """The first-party modules `path` imports when it runs (imports under `if TYPE_CHECKING:` left out)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit([item for item in inner if isinstance(item, ast.stmt)])
                    for handler in inner:
                        if isinstance(handler, ast.ExceptHandler):
                            visit(handler.body)

    visit(tree.body)
    return {name for name in found if name.split(".")[0] in FIRST_PARTY}


MODULES = {module_name(path): path for path in source_files()}
IMPORTS = {name: runtime_imports(path) for name, path in MODULES.items()}


def imports_of(prefix: str) -> Iterator[tuple[str, str]]:
    """(importer, imported) for every module under `prefix`."""
    for name, imported in sorted(IMPORTS.items()):
        if name == prefix or name.startswith(prefix + "."):
            for target in sorted(imported):
                yield name, target


def under(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def test_core_imports_neither_process_nor_a_provider() -> None:
    """`core` is what both processes share: it depends on no process's package and on no provider."""
    assert [
        edge for edge in imports_of("core") if under(edge[1], "server", "webhook_gateway", "providers", "tools")
    ] == []


def test_providers_depend_on_core_only() -> None:
    """A provider implements core's interfaces and knows nothing of the processes that use it."""
    assert [edge for edge in imports_of("providers") if under(edge[1], "server", "webhook_gateway", "tools")] == []


def test_the_gateway_and_the_service_meet_only_in_core() -> None:
    """No edge between the gateway's and the service's packages: each can be read and shipped alone."""
    assert [edge for edge in imports_of("webhook_gateway") if under(edge[1], "server")] == []
    assert [edge for edge in imports_of("server") if under(edge[1], "webhook_gateway")] == []


def test_only_composition_roots_import_a_provider() -> None:
    """Generic code depends on the interfaces in core; the composition roots choose the provider."""
    importers = {
        relative(MODULES[name])
        for name, imported in IMPORTS.items()
        if not under(name, "providers") and any(under(target, "providers") for target in imported)
    }
    assert importers <= COMPOSITION_ROOTS


def test_xsolla_is_named_in_code_only_by_its_provider_and_the_composition_roots() -> None:
    """Outside the provider package, Xsolla appears in comments and docstrings (and the composition roots)."""
    offenders = []
    for path in source_files():
        name = relative(path)
        if name.startswith(("providers/xsolla/", "xsolla_simulator/")) or name in COMPOSITION_ROOTS:
            continue
        text = path.read_text()
        docstrings: set[int] = set()
        for node in ast.walk(ast.parse(text)):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                value = body[0].value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    docstrings.update(range(value.lineno, (value.end_lineno or value.lineno) + 1))
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            mentions = token.type != tokenize.COMMENT and "xsolla" in token.string.lower()
            if mentions and token.start[0] not in docstrings:
                offenders.append(f"{name}:{token.start[0]}: {token.line.strip()}")
    assert offenders == []


def test_no_import_cycle_between_modules() -> None:
    """Modules import each other in one direction only (at run time)."""
    graph = {
        name: {target for target in imported if target in MODULES and target != name}
        for name, imported in IMPORTS.items()
    }
    # A package's __init__ re-exporting its modules is the package itself: its own modules may import it.
    cycles = []
    state: dict[str, int] = {}

    def walk(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in graph[name]:
            if under(name, target) or under(target, name):
                continue  # a module and its own package's __init__
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [name, target])
            elif target not in state:
                walk(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []


@pytest.mark.parametrize("path", list(source_files()), ids=relative)
def test_no_module_holds_two_concepts(path: Path) -> None:
    """No hand-written module is over about 450 lines (past that it is usually two concepts)."""
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{relative(path)} has {lines} lines"
