"""The stage arrows of docs/pipeline.md, checked on the source (parsed, never imported).

Each module belongs to a stage: ``autoseg/training/`` to training, the four stage folders to
their stage, every other module under ``autoseg/`` to the core. A module may import its own
stage and the stages before it; the few imports against the flow are listed in ``EXCEPTIONS``
and named with their reason in docs/pipeline.md ("Imports against the flow"). No module may
take part in an import cycle, whether its imports are at the top or inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOW = ("core", "planners", "preprocess", "training", "postprocess", "inference")
STAGE_FOLDERS = ("planners", "preprocess", "postprocess", "inference")

# (importing module, imported module): each one named, with its reason, in docs/pipeline.md
EXCEPTIONS = {
    ("autoseg.planners.step_timing", "autoseg.training.loss"),
    ("autoseg.planners.step_timing", "autoseg.training.network"),
    ("autoseg.training.schedule", "autoseg.inference.fast_forward"),
    ("autoseg.training.steps", "autoseg.inference.fast_forward"),
    ("autoseg.training.trainer", "autoseg.inference.validation"),
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for the core, training and the four stage folders."""
    files = {}
    for folder in ("autoseg",) + STAGE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if folder == "autoseg":
                parts = parts[1:]
            name = ".".join(("autoseg",) + parts)
            files[name.removesuffix(".__init__")] = path
    return files


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "training":
        return "training"
    if len(parts) > 1 and parts[1] in STAGE_FOLDERS:
        return parts[1]
    return "core"


def imported_modules(module: str, path: Path, known: set[str]) -> dict[str, int]:
    """The autoseg modules ``module`` imports, anywhere in the file -> the first line doing so."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != module:
                found.setdefault(target, node.lineno)
    return found


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}, files


def imports_against_flow() -> list[tuple[str, str, str]]:
    graph, files = import_graph()
    against = []
    for module, targets in graph.items():
        for target, line in targets.items():
            if FLOW.index(stage_of(target)) > FLOW.index(stage_of(module)):
                against.append((module, target, f"{files[module].relative_to(REPO)}:{line}"))
    return against


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph, _ = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_imports_follow_the_stage_arrows():
    unexpected = [f"{where}: {module} ({stage_of(module)}) imports {target} ({stage_of(target)})"
                  for module, target, where in imports_against_flow() if (module, target) not in EXCEPTIONS]
    assert not unexpected, ("imports against the flow " + " <- ".join(FLOW) + " (move the shared code to "
                            "the earlier stage or the core, or name the exception and why in "
                            "docs/pipeline.md and EXCEPTIONS):\n" + "\n".join(unexpected))


def test_every_named_exception_is_still_there_and_documented():
    present = {(module, target) for module, target, _ in imports_against_flow()}
    assert EXCEPTIONS <= present, f"exceptions no longer needed, remove them: {sorted(EXCEPTIONS - present)}"
    rows = [line for line in (REPO / "docs" / "pipeline.md").read_text().splitlines() if line.startswith("|")]
    for module, target in EXCEPTIONS:
        assert any(f"`{module}`" in row and f"`{target}`" in row for row in rows), \
            f"no row of docs/pipeline.md's table of exceptions names {module} -> {target}"


def test_no_import_cycles():
    assert not import_cycles(), f"import cycles: {import_cycles()}"


def test_the_check_sees_a_new_import_against_the_flow(tmp_path):
    module = tmp_path / "fingerprint.py"
    module.write_text("def f():\n    from autoseg.training.budget import WARMUP_ITERATIONS\n")
    found = imported_modules("autoseg.fingerprint", module, {"autoseg.training.budget"})
    assert found == {"autoseg.training.budget": 2}
    assert FLOW.index(stage_of("autoseg.training.budget")) > FLOW.index(stage_of("autoseg.fingerprint"))
