"""Checks of the task graph's shape (`graph --check`): cycles, missing tasks, orphan inputs.

doit finds some of these only when a run reaches them (a cycle, a task_dep on a missing
task) and others never (a file_dep that nothing makes fails the task at every boot).
These checks run over the whole graph at once, delayed tasks included, so the test
suite catches them for every distribution family before a VM does.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable
from typing import Any

import networkx as nx


def task_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The tasks a task_dep names (doit accepts `area:*` wildcards)."""
    if "*" in pattern:
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [pattern] if pattern in names else []


def dependency_graph(tasks: Iterable[Any]) -> nx.DiGraph:
    """Edges from each task to what it needs: task_dep, setup tasks, makers of its file_deps."""
    tasks = list(tasks)
    names = {t.name for t in tasks}
    makers = {target: t.name for t in tasks for target in t.targets}
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    for task in tasks:
        for pattern in [*task.task_dep, *task.setup_tasks]:
            for dep in task_names(pattern, names):
                graph.add_edge(task.name, dep, kind="task")
        for path in task.file_dep:
            if path in makers:
                graph.add_edge(task.name, makers[path], kind="file", file=path)
    return graph


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """One cycle per knot of mutually dependent tasks, as [a, b, ..., a]."""
    found = []
    for component in nx.strongly_connected_components(graph):
        sub = graph.subgraph(component)
        if len(component) == 1 and not sub.number_of_edges():
            continue
        ring = [edge[0] for edge in nx.find_cycle(sub)]
        start = ring.index(min(ring))  # stable wording: start at the smallest name
        ring = ring[start:] + ring[:start]
        found.append([*ring, ring[0]])
    return sorted(found)


def graph_problems(tasks: Iterable[Any],
                   exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """Every problem of the graph's shape, one sentence each naming the task."""
    tasks = list(tasks)
    names = {t.name for t in tasks}
    made = {target for t in tasks for target in t.targets}
    problems = []
    for task in sorted(tasks, key=lambda t: t.name):
        for kind, deps in (("task_dep", task.task_dep), ("setup", task.setup_tasks)):
            for dep in deps:
                if not task_names(dep, names):
                    problems.append(f"{task.name}: {kind} {dep!r} is not a task")
        for path in sorted(task.file_dep):
            if path not in made and not exists(path):
                problems.append(f"{task.name}: file_dep {path} does not exist "
                                "and no task makes it")
    for ring in cycles(dependency_graph(tasks)):
        problems.append("cycle: " + " -> ".join(ring)
                        + " (each waits for the next; none can run)")
    return problems
