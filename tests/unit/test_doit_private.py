"""graph/doit_private.py: the one home of doit's private API, guarded by doit's version."""

from __future__ import annotations

import ast
from pathlib import Path

import doit
import pytest

from graph import doit_private

REPO = Path(__file__).resolve().parents[2]
# Attributes of doit's that are private by use rather than by name: Task's bookkeeping and
# the hooks that Python's inspect follows (doit reads callables' signatures).
PRIVATE_BY_USE = {"value_savers", "dep_changed", "__signature__", "__wrapped__"}


def doit_private_names() -> set[str]:
    """Every `_name` (not dunder) that doit's sources define or use as an attribute."""
    found: set[str] = set()
    for path in Path(doit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, ast.Attribute):
                found.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found.add(node.id)
    return {name for name in found if name.startswith("_") and not name.startswith("__")
            and name != "_"}


def test_a_doit_version_it_knows_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ((0, 37, 0), (0, 37, 5)):
        monkeypatch.setattr(doit, "__version__", version)
        doit_private.check_doit_version()


@pytest.mark.parametrize("version", [(0, 38, 0), (0, 36, 0), (1, 0, 0)])
def test_an_unknown_doit_version_fails_clearly(monkeypatch: pytest.MonkeyPatch,
                                               version: tuple[int, ...]) -> None:
    monkeypatch.setattr(doit, "__version__", version)
    shown = ".".join(map(str, version))
    with pytest.raises(doit_private.UnknownDoitVersion,
                       match=rf"doit {shown} is installed.*doit 0\.37\.x.*doit_private"):
        doit_private.check_doit_version()


def test_only_doit_private_touches_doits_private_names() -> None:
    private = (doit_private_names() | PRIVATE_BY_USE) - {
        # Our own names that doit happens to use too, on our own objects.
        "_execute",  # the documented hook of a doit command, overridden by ours
    }
    assert {"_actions", "_get", "_from_entry_points", "_conn", "_cache", "_dirty",
            "_get_task_creators", "_backends"} <= private, "the list is doit's"
    found = []
    for path in sorted([*REPO.glob("graph/*.py"), *REPO.glob("tasks/*.py"), REPO / "dodo.py"]):
        if path.name == "doit_private.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        ours = {node.name for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        ours |= {target.attr for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Attribute)
                 and isinstance(target.value, ast.Name) and target.value.id == "self"}
        ours |= {node.target.attr for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                 and isinstance(node.target, ast.Attribute)}
        for node in ast.walk(tree):
            # x._name, `import ..._name`, a class body's `__signature__ = ...`, and
            # getattr(x, "_name")
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.name.rsplit(".", 1)[-1] if isinstance(node, ast.alias)
                    else node.id if isinstance(node, ast.Name) and node.id in PRIVATE_BY_USE
                    else node.args[1].value if isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "setattr", "hasattr")
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    else None)
            if name in private and name not in ours:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not found, "doit's private names outside graph/doit_private.py:\n" + "\n".join(found)


@pytest.mark.parametrize("pattern", ["ssh:*", "ssh:host*", "ss*", "*", "ssh:*keys",
                                     "ssh:?ey*", "[su]s*:*", "nothing:*"])
def test_wildcards_expand_as_doits_own_expansion(pattern: str) -> None:
    from doit.control import TaskControl
    from doit.task import Task

    names = ["gather:vm", "ssh:hostkeys", "ssh:keys", "ssh", "ssh2:x", "user:account",
             "ussh:y", "ss"]
    control = TaskControl([Task(name, None) for name in names])
    assert doit_private._wild_tasks(control, pattern) == \
        doit_private._doit_wild_tasks(control, pattern)
    assert doit_private._wild_tasks(control, "ssh:*") == ["ssh:hostkeys", "ssh:keys"]
