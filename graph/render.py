"""`graph [TASK...]`: the task graph as DOT, Mermaid, JSON, SVG or one self-contained HTML page.

Nodes are tasks, clustered by area; edges point the way work flows (from a dependency to
the task that needs it), solid for task_dep, dashed for file_dep. A node's fill is what
a run would do now (from the up-to-date checks, on a copy of doit's state: the same
verdicts as `plan`, without running actions); its border is the last run's result (from
the run report). Delayed (`create_after`) tasks are drawn too, with a dashed outline.

`--check` runs graph/checks.py instead of drawing. networkx is imported here and in
checks.py only: never on the boot path.
"""

from __future__ import annotations

import html
import json
import string
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
from doit.cmd_base import DoitCmdBase, check_tasks_exist, tasks_and_deps_iter

from graph import loader
from graph.checks import graph_problems, task_names
from graph.plan import ScratchStateCommand, task_status
from graph.reporter import last_run
from system.runner import Runner

FORMATS = ("dot", "mermaid", "json", "svg", "html")

# Fill: what a run would do now. Border: what the last run did.
PLAN_FILL = {"up-to-date": "#c8e6c9", "run": "#ffe0b2", "error": "#ffcdd2",
             "group": "#eeeeee", "unknown": "#ffffff"}
PLAN_WORDS = {"up-to-date": "up to date", "run": "will run", "error": "would fail",
              "group": "group", "unknown": "not checked"}
LAST_BORDER = {"changed": "#1565c0", "failed": "#c62828", "up-to-date": "#2e7d32",
               "ignored": "#6d4c41", None: "#9e9e9e"}
LAST_WORDS = {"changed": "ran", "failed": "failed", "up-to-date": "was up to date",
              "ignored": "ignored", None: "not in the last run"}


@dataclass
class Node:
    """A task as the pictures show it."""

    name: str
    doc: str
    cluster: str  # the area (task name before ':'); "" for groups like provision
    group: bool  # no actions: only ties tasks together
    delayed: bool  # made by a create_after generator, once its facts exist
    task_dep: list[str]
    file_dep: list[str]
    targets: list[str]
    plan: str = "unknown"  # a key of PLAN_FILL
    plan_reasons: list[str] = field(default_factory=list)
    last: str | None = None  # a key of LAST_BORDER
    last_reason: list[str] = field(default_factory=list)
    last_error: str = ""
    last_duration: float | None = None


@dataclass
class Edge:
    """`source` is needed by `target`: it runs first."""

    source: str
    target: str
    kind: str  # "task" or "file"
    file: str = ""


@dataclass
class TaskGraph:
    """What every format draws."""

    nodes: dict[str, Node]
    edges: list[Edge]
    last_run_file: str = ""

    def clusters(self) -> dict[str, list[Node]]:
        found: dict[str, list[Node]] = {}
        for node in self.nodes.values():
            found.setdefault(node.cluster, []).append(node)
        return found

    def drawn_edges(self) -> list[Edge]:
        """Edges for pictures: into a group only the ones not implied by another path
        (the area's last tasks), so an area of six tasks does not draw six arrows out."""
        flow = nx.DiGraph()
        flow.add_edges_from((e.source, e.target) for e in self.edges)
        reduced = nx.transitive_reduction(flow) if nx.is_directed_acyclic_graph(flow) else flow
        return [e for e in self.edges
                if not self.nodes[e.target].group or reduced.has_edge(e.source, e.target)]

    def to_json(self) -> dict[str, Any]:
        return {"tasks": [asdict(n) for n in self.nodes.values()],
                "edges": [asdict(e) for e in self.edges], "last_run": self.last_run_file}


def delayed_basenames(namespace: dict[str, Any] | None) -> set[str]:
    """Task basenames made by `@create_after` generators."""
    found: set[str] = set()
    for name, ref in (namespace or {}).items():
        delayed = getattr(ref, "doit_create_after", None)
        if name.startswith("task_") and delayed is not None:
            found.update(delayed.creates or [name[len("task_"):]])
    return found


def build_graph(tasks: list[Any], namespace: dict[str, Any] | None = None) -> TaskGraph:
    """The picture's model of doit's tasks (edges of task_dep and of file_dep via targets)."""
    names = [t.name for t in tasks]
    delayed = delayed_basenames(namespace)
    makers = {target: t.name for t in tasks for target in t.targets}
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    for task in tasks:
        basename = task.name.split(":")[0]
        nodes[task.name] = Node(
            name=task.name, doc=task.doc or "",
            cluster=basename if (task.subtask_of or task.has_subtask) else "",
            group=not task.actions, delayed=basename in delayed or bool(task.loader),
            task_dep=list(task.task_dep), file_dep=sorted(task.file_dep),
            targets=list(task.targets))
        for pattern in [*task.task_dep, *task.setup_tasks]:
            edges.extend(Edge(dep, task.name, "task") for dep in task_names(pattern, names))
        for path in sorted(task.file_dep):
            if path in makers:
                edges.append(Edge(makers[path], task.name, "file", path))
    return TaskGraph(nodes, edges)


def add_plan_status(graph: TaskGraph, dep_manager: Any, tasks: list[Any]) -> None:
    """Colour by the up-to-date checks; a task reading a file a running task makes runs too."""
    by_name = {t.name: t for t in tasks}
    flow = nx.DiGraph()
    flow.add_nodes_from(graph.nodes)
    flow.add_edges_from((e.source, e.target) for e in graph.edges)
    order = (list(nx.topological_sort(flow)) if nx.is_directed_acyclic_graph(flow)
             else list(graph.nodes))
    remade: dict[str, str] = {}
    for name in order:
        node, task = graph.nodes[name], by_name[name]
        if node.group:
            node.plan = "group"
            continue
        result, verdict = task_status(dep_manager, task, by_name, remade)
        node.plan, node.plan_reasons = result.status, verdict.reasons
        if node.plan == "run":
            remade.update((target, name) for target in task.targets)


def add_last_run(graph: TaskGraph, report: dict[str, Any] | None) -> None:
    """Borders from the last run report."""
    if not report:
        return
    graph.last_run_file = report.get("file", "")
    for name, entry in report.get("tasks", {}).items():
        node = graph.nodes.get(name)
        if node is not None:
            node.last = entry.get("result")
            node.last_reason = list(entry.get("reason") or [])
            node.last_error = entry.get("error") or ""
            node.last_duration = entry.get("duration")


# -- formats

def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def node_ids(graph: TaskGraph) -> dict[str, str]:
    """Short ids for nodes (task names hold ':' which DOT, Mermaid and CSS dislike)."""
    return {name: f"n{i}" for i, name in enumerate(graph.nodes)}


def tooltip(node: Node) -> str:
    lines = [node.name, node.doc, f"now: {PLAN_WORDS[node.plan]}",
             f"last run: {LAST_WORDS.get(node.last, node.last or '')}"]
    lines += [f"because {r}" for r in node.plan_reasons]
    return "\n".join(line for line in lines if line)


def to_dot(graph: TaskGraph) -> str:
    ids = node_ids(graph)
    out = ["digraph waagent {", "  rankdir=LR; compound=true; newrank=true;",
           '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
           '  edge [color="#616161"];']

    def node_line(node: Node) -> str:
        style = "rounded,filled" + (",dashed" if node.delayed or node.last is None else "")
        if node.group:
            style = style.replace("rounded,", "")
        label = node.name + ("\n(delayed)" if node.delayed else "")
        attrs = {"id": ids[node.name], "label": label, "tooltip": tooltip(node),
                 "fillcolor": PLAN_FILL[node.plan], "color": LAST_BORDER.get(node.last, "#000"),
                 "penwidth": "3" if node.last == "failed" else "2", "style": style,
                 "shape": "folder" if node.group else "box"}
        return (f"    {ids[node.name]} ["
                + ", ".join(f"{k}={_dot_quote(v)}" for k, v in attrs.items()) + "];")

    for cluster, members in graph.clusters().items():
        if cluster:
            out.append(f"  subgraph cluster_{ids[members[0].name]} {{")
            out.append(f"    label={_dot_quote(cluster)}; style=rounded; color=\"#90a4ae\";")
        out.extend(node_line(n) for n in members)
        if cluster:
            out.append("  }")
    for edge in graph.drawn_edges():
        attrs = ' [style=dashed, tooltip=' + _dot_quote(edge.file) + "]" if edge.kind == "file" \
            else ""
        out.append(f"  {ids[edge.source]} -> {ids[edge.target]}{attrs};")
    out.append("}")
    return "\n".join(out) + "\n"


def _mermaid_text(text: str) -> str:
    return html.escape(text, quote=True).replace("&quot;", "#quot;")


def to_mermaid(graph: TaskGraph) -> str:
    ids = node_ids(graph)
    out = ["flowchart LR"]
    for cluster, members in graph.clusters().items():
        indent = "  "
        if cluster:
            out.append(f'  subgraph {ids[members[0].name]}_area["{_mermaid_text(cluster)}"]')
            indent = "    "
        for node in members:
            label = _mermaid_text(node.name + (" (delayed)" if node.delayed else ""))
            shape = f'[["{label}"]]' if node.group else f'("{label}")'
            out.append(f"{indent}{ids[node.name]}{shape}")
        if cluster:
            out.append("  end")
    for edge in graph.drawn_edges():
        arrow = "-.->" if edge.kind == "file" else "-->"
        out.append(f"  {ids[edge.source]} {arrow} {ids[edge.target]}")
    for status, colour in PLAN_FILL.items():
        out.append(f"  classDef {status.replace('-', '')} fill:{colour},stroke:#616161")
    for node in graph.nodes.values():
        out.append(f"  class {ids[node.name]} {node.plan.replace('-', '')}")
        out.append(f"  style {ids[node.name]} stroke:{LAST_BORDER.get(node.last, '#000')},"
                   f"stroke-width:{3 if node.last == 'failed' else 2}px")
    return "\n".join(out) + "\n"


class RenderError(RuntimeError):
    """A picture could not be made (a missing tool)."""


def to_svg(graph: TaskGraph) -> str:
    """SVG through Graphviz `dot` (a read-only command: run on the host, never chrooted)."""
    try:
        result = Runner().probe(["dot", "-Tsvg"], input=to_dot(graph), check=True)
    except Exception as err:
        raise RenderError(f"svg needs Graphviz `dot` (Debian package graphviz): {err}") from err
    return result.stdout


def to_html(graph: TaskGraph) -> str:
    """One page, nothing fetched: the SVG inline, task details on hover and click."""
    svg = to_svg(graph)
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE
    ids = node_ids(graph)
    details = {ids[name]: asdict(node) | {"plan_words": PLAN_WORDS[node.plan],
                                          "last_words": LAST_WORDS.get(node.last, "")}
               for name, node in graph.nodes.items()}
    # "</" inside a script would end it: escape so task docs cannot break out.
    data = json.dumps(details, default=str).replace("</", "<\\/")
    legend = "".join(
        f'<li><span class="swatch" style="background:{PLAN_FILL[k]}"></span>{html.escape(w)}</li>'
        for k, w in PLAN_WORDS.items())
    legend += "".join(
        f'<li><span class="swatch" style="border:3px solid {LAST_BORDER[k]}"></span>'
        f"last run: {html.escape(w)}</li>" for k, w in LAST_WORDS.items())
    index = "".join(f'<li><a href="#" data-node="{ids[n]}">{html.escape(n)}</a></li>'
                    for n in sorted(graph.nodes))
    return html_page().substitute(svg=svg, data=data, legend=legend, index=index,
                                  report=html.escape(graph.last_run_file or "no run yet"))


def html_page() -> string.Template:
    """The page around the picture: graph/templates/graph.html, $-placeholders."""
    page = resources.files("graph").joinpath("templates/graph.html")
    return string.Template(page.read_text(encoding="utf-8"))


def to_json(graph: TaskGraph) -> str:
    return json.dumps(graph.to_json(), indent=1, default=str) + "\n"


RENDERERS: dict[str, Callable[[TaskGraph], str]] = {
    "dot": to_dot, "mermaid": to_mermaid, "json": to_json, "svg": to_svg, "html": to_html}


opt_format = {"name": "graph_format", "long": "format", "type": str, "default": "dot",
              "choices": [(f, "") for f in FORMATS], "help": "dot, mermaid, json, svg or html"}
opt_output = {"name": "output", "short": "o", "long": "output", "type": str, "default": "",
              "help": "write to FILE instead of stdout"}
opt_check = {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "check the graph (cycles, missing tasks and inputs) instead of drawing"}
opt_no_status = {"name": "no_status", "long": "no-status", "type": bool, "default": False,
                 "help": "do not run the up-to-date checks (no plan colours)"}


class Graph(ScratchStateCommand, DoitCmdBase):
    """Draw or check the task graph."""

    name = "graph"
    doc_purpose = "draw the task graph (dot, mermaid, json, svg, html) or --check it"
    doc_usage = "[TASK ...] [--format FORMAT] [--output FILE] [--check]"
    doc_description = ("Fill colour: what a run would do now; border: the last run's result. "
                       "With TASK names, only those tasks and what they depend on.")
    cmd_options = (opt_format, opt_output, opt_check, opt_no_status)

    def execute(self, params: Any, args: Any) -> Any:
        # Loading the graph in plan mode and on a copy of doit's state: looking changes nothing.
        return self.execute_on_scratch_state(super().execute, params, args)

    def _execute(self, graph_format: str = "dot", output: str = "", check: bool = False,
                 no_status: bool = False, pos_args: Any = None) -> int:
        tasks = self.selected_tasks(pos_args or [])
        if check:
            return self.check(tasks)
        graph = build_graph(tasks, getattr(self.loader, "namespace", None))
        if not no_status:
            add_plan_status(graph, self.dep_manager, tasks)
        ctx = loader.PROCESS.context
        add_last_run(graph, last_run(ctx) if ctx is not None else None)
        try:
            text = RENDERERS[graph_format](graph)
        except RenderError as err:
            sys.stderr.write(f"graph: {err}\n")
            return 2
        if output:
            Path(output).write_text(text, encoding="utf-8")
        else:
            self.outstream.write(text)
        return 0

    def selected_tasks(self, names: list[str]) -> list[Any]:
        """All tasks, or the named ones with their subtasks and everything they depend on."""
        if not names:
            return list(self.task_list)
        tasks = {t.name: t for t in self.task_list}
        check_tasks_exist(tasks, names)
        wanted = {t.name for t in tasks_and_deps_iter(tasks, names)}
        return [t for t in self.task_list if t.name in wanted]

    def check(self, tasks: list[Any]) -> int:
        problems = graph_problems(tasks)
        for problem in problems:
            self.outstream.write(f"ERROR {problem}\n")
        if problems:
            self.outstream.write(f"graph check: {len(problems)} problem(s) in {len(tasks)} "
                                 "tasks\n")
            return 1
        self.outstream.write(f"graph check: {len(tasks)} tasks, no problems\n")
        return 0
