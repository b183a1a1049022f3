"""A flow drawn as an SVG diagram on the server: steps as boxes, where each can go as labelled
arrows, the trigger above, the goal beside, the end below; counts on each box link to the
enrollments behind them.

Layout: steps are put in layers by the longest path from the first step over the forward
edges (an edge back to an earlier layer, a loop, is drawn up the right-hand side), and in
list order within a layer. Plain string building, escaped: no browser library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Callable

from markupsafe import Markup

from nurture.flow import FlowDefinition
from nurture.flow.language import (
    BranchStep,
    DelayStep,
    DelayUntilStep,
    ExitStep,
    GotoStep,
    HandoffToSalesStep,
    SendEmailStep,
    SplitStep,
    SwitchStep,
    WaitForEventStep,
    WaitUntilStep,
)

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 210, 84, 40, 70, 24
LINE_H = 18
END = "__end__"


@dataclass
class StepCounts:
    """What a box shows: counts and where each links (None: not a link)."""

    waiting: int = 0
    entered: int = 0
    exited: int = 0
    exited_by: dict[str, int] = field(default_factory=dict)  # reason -> enrollments that exited here for it
    sent: int | None = None
    opened: int | None = None
    clicked: int | None = None
    variants: list[tuple[str, int, int, int]] = field(default_factory=list)  # name, sent, opened, clicked


@dataclass
class _Edge:
    source: str
    target: str
    label: str


def _duration(value) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _summary(step) -> str:
    if isinstance(step, SendEmailStep):
        return f"email {step.template}" if step.template else "email (A/B)"
    if isinstance(step, DelayStep):
        return f"wait {_duration(step.duration)}"
    if isinstance(step, WaitForEventStep):
        return f"wait for {step.event}"
    if isinstance(step, WaitUntilStep):
        return f"wait until {', '.join(step.weekdays)} {step.time}"
    if isinstance(step, DelayUntilStep):
        return "wait until a date"
    if isinstance(step, ExitStep):
        return f"exit ({step.reason})"
    return step.type.replace("_", " ")


def _edges(flow: FlowDefinition) -> list[_Edge]:
    found: list[_Edge] = []
    for index, step in enumerate(flow.steps):
        targets = flow.successors(index)
        if isinstance(step, BranchStep):
            labels = ["yes", "no"]
        elif isinstance(step, WaitForEventStep):
            labels = [step.event, f"no {step.event} in {_duration(step.timeout)}"]
        elif isinstance(step, SwitchStep):
            labels = [case.name or f"case {i + 1}" for i, case in enumerate(step.cases)] + ["otherwise"]
        elif isinstance(step, SplitStep):
            labels = [f"{path.name} {path.percent}%" for path in step.paths]
        elif isinstance(step, GotoStep):
            labels = [f"loop (up to {step.max_loops}×)", "after the loops"]
        elif isinstance(step, HandoffToSalesStep):
            labels = ["deal won", "deal lost", "returned", "silence"]
        elif isinstance(step, DelayStep):
            labels = [f"after {_duration(step.duration)}"]
        else:
            labels = [""]
        merged: dict[str, list[str]] = {}
        for target, label in zip(targets, labels, strict=False):
            merged.setdefault(target or END, []).append(label)
        for target, names in merged.items():
            found.append(_Edge(step.id, target, " / ".join(n for n in names if n)))
    return found


def _layers(flow: FlowDefinition, edges: list[_Edge]) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Each node's layer (longest forward path from the first step) and the edges that loop back."""
    order = [s.id for s in flow.steps] + [END]
    outgoing: dict[str, list[str]] = {node: [] for node in order}
    for edge in edges:
        outgoing[edge.source].append(edge.target)
    back: set[tuple[str, str]] = set()
    state: dict[str, int] = {}
    finished: list[str] = []
    for root in order:  # iterative DFS: a long flow cannot exhaust the recursion limit
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(outgoing[root]))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                finished.append(node)
                stack.pop()
            elif state.get(child) == 1:
                back.add((node, child))
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(outgoing[child])))
    layer = {node: 0 for node in order}
    for node in reversed(finished):  # topological order of the forward edges
        for target in outgoing[node]:
            if (node, target) not in back:
                layer[target] = max(layer[target], layer[node] + 1)
    if not any(e.target == END for e in edges):
        layer.pop(END)
    return layer, back


def draw(
    flow: FlowDefinition,
    counts: dict[str, StepCounts] | None = None,
    link: Callable[[str, str], str] | None = None,
    *,
    compact: bool = False,
) -> Markup:
    """The SVG. ``link(step_id, what)`` gives the URL behind a count (what: waiting, entered, exited,
    or ``exited:<reason>`` for the exits of one reason)."""
    edges = _edges(flow)
    layer, back = _layers(flow, edges)
    rows: dict[int, list[str]] = {}
    for node in [s.id for s in flow.steps] + [END]:
        if node in layer:
            rows.setdefault(layer[node], []).append(node)
    width_nodes = max(len(r) for r in rows.values())
    # Every box as tall as the one with the most lines: a line for exits by reason, one per A/B variant.
    extra = 0 if compact else max(
        (bool(c.exited_by) + len(c.variants) for c in (counts or {}).values()), default=0
    )
    box_h = 52 if compact else BOX_H + LINE_H * extra
    inner_w = width_nodes * BOX_W + (width_nodes - 1) * GAP_X
    loop_room = 60 if back else 0
    goal_room = 40 if flow.goal is not None else 0
    top = MARGIN + goal_room + 56  # the goal, then the trigger, above the first layer
    width = inner_w + 2 * MARGIN + loop_room
    position: dict[str, tuple[float, float]] = {}
    for number, nodes in rows.items():
        row_w = len(nodes) * BOX_W + (len(nodes) - 1) * GAP_X
        x0 = MARGIN + (inner_w - row_w) / 2
        for i, node in enumerate(nodes):
            position[node] = (x0 + i * (BOX_W + GAP_X), top + number * (box_h + GAP_Y))
    height = top + (max(rows) + 1) * (box_h + GAP_Y) - GAP_Y + MARGIN
    steps = {s.id: s for s in flow.steps}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow-diagram" role="img" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" aria-label="Diagram of the flow {escape(flow.name)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#5b6478"/></marker></defs>',
    ]
    # The trigger, and the goal that makes a contact leave from anywhere.
    first = position[flow.steps[0].id]
    trigger = flow.trigger
    what = f"when {trigger.event}" if getattr(trigger, "event", None) else f"{trigger.type} trigger"
    trigger_y = MARGIN + goal_room
    parts.append(
        f'<g class="trigger"><rect x="{first[0] + 20}" y="{trigger_y}" width="{BOX_W - 40}" height="30" rx="15"/>'
        f'<text x="{first[0] + BOX_W / 2}" y="{trigger_y + 20}" text-anchor="middle">{escape(what)}</text></g>'
        f'<path class="edge" d="M{first[0] + BOX_W / 2},{trigger_y + 30} L{first[0] + BOX_W / 2},{first[1]}" marker-end="url(#arrow)"/>'
    )
    if flow.goal is not None:
        # Above everything: the goal ends the enrollment at any step.
        goal = f"goal: {flow.goal.event or 'a condition'} → exit"
        w = min(max(BOX_W - 20, 7 * len(goal) + 16), width - 8)
        gx = min(max(4, first[0] + BOX_W / 2 - w / 2), width - 4 - w)
        parts.append(
            f'<g class="goal"><rect x="{gx}" y="{MARGIN}" width="{w}" height="30" rx="4"/>'
            f'<text x="{gx + w / 2}" y="{MARGIN + 20}" text-anchor="middle">{escape(goal)}</text></g>'
        )
    for edge in edges:
        parts.append(_edge_svg(edge, position, box_h, (edge.source, edge.target) in back, inner_w + MARGIN))
    for node, (x, y) in position.items():
        if node == END:
            parts.append(
                f'<g class="node end"><rect x="{x + 45}" y="{y}" width="{BOX_W - 90}" height="34" rx="17"/>'
                f'<text x="{x + BOX_W / 2}" y="{y + 22}" text-anchor="middle">end (completed)</text></g>'
            )
            continue
        step = steps[node]
        parts.append(_node_svg(step, x, y, box_h, (counts or {}).get(node), link, compact))
    parts.append("</svg>")
    return Markup("".join(parts))


def _edge_svg(edge: _Edge, position, box_h: float, looping: bool, right: float) -> str:
    sx, sy = position[edge.source]
    tx, ty = position[edge.target]
    if looping or ty <= sy:
        x1, y1 = sx + BOX_W, sy + box_h / 2
        x2, y2 = tx + BOX_W, ty + (box_h / 2 if edge.target != "__end__" else 17)
        out = max(right, x1, x2) + 40
        path = f"M{x1},{y1} C{out},{y1} {out},{y2} {x2 + 2},{y2}"
        lx, ly = out - 4, (y1 + y2) / 2
    else:
        x1, y1 = sx + BOX_W / 2, sy + box_h
        x2, y2 = tx + BOX_W / 2, ty
        mid = (y1 + y2) / 2
        path = f"M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}"
        lx, ly = (x1 + x2) / 2, mid
    label = ""
    if edge.label:
        text = escape(edge.label)
        w = 7 * len(edge.label) + 10
        label = (
            f'<rect class="edge-label-bg" x="{lx - w / 2:.0f}" y="{ly - 10:.0f}" width="{w}" height="18" rx="3"/>'
            f'<text class="edge-label" x="{lx:.0f}" y="{ly + 3:.0f}" text-anchor="middle">{text}</text>'
        )
    return f'<g class="edge-group"><path class="edge" d="{path}" marker-end="url(#arrow)"/>{label}</g>'


def _count(value: int, label: str, href: str | None) -> str:
    text = f"{value} {label}"
    if href:
        return f'<a href="{escape(href)}"><tspan class="count">{escape(text)}</tspan></a>'
    return f'<tspan class="count">{escape(text)}</tspan>'


def _node_svg(step, x: float, y: float, box_h: float, counts: StepCounts | None, link, compact: bool) -> str:
    kind = step.type
    lines = [
        f'<g class="node {kind}" data-step="{escape(step.id)}">'
        f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{box_h}" rx="6"><title>{escape(step.id)}: {escape(kind)}</title></rect>',
        f'<text class="step-id" x="{x + 10}" y="{y + 19}">{escape(step.id[:26])}</text>',
        f'<text class="step-kind" x="{x + 10}" y="{y + 37}">{escape(_summary(step)[:30])}</text>',
    ]
    if not compact and counts is not None:
        ref = (lambda what: link(step.id, what)) if link else (lambda what: None)
        row = [_count(counts.waiting, "waiting", ref("waiting")), _count(counts.entered, "entered", ref("entered"))]
        if counts.exited:
            row.append(_count(counts.exited, "exited", ref("exited")))
        lines.append(f'<text class="counts" x="{x + 10}" y="{y + 56}">{" · ".join(row)}</text>')
        line_y = y + 74
        if counts.sent is not None:
            lines.append(
                f'<text class="email-counts" x="{x + 10}" y="{line_y}">'
                f"{counts.sent} sent · {counts.opened} opened · {counts.clicked} clicked</text>"
            )
            line_y += LINE_H
        for name, sent, opened, clicked in counts.variants:
            lines.append(
                f'<text class="variant-counts" data-variant="{escape(name)}" x="{x + 10}" y="{line_y}">'
                f"{escape(name[:8])}: {sent} sent · {opened} opened · {clicked} clicked</text>"
            )
            line_y += LINE_H
        if counts.exited_by:
            reasons = [_count(n, reason, ref(f"exited:{reason}")) for reason, n in sorted(counts.exited_by.items())]
            lines.append(f'<text class="exit-counts" x="{x + 10}" y="{line_y}">exited: {" · ".join(reasons)}</text>')
    lines.append("</g>")
    return "".join(lines)
