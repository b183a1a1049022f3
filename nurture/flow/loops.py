"""Loops in a flow's step graph, found in time linear in its size (no search per step)."""

from __future__ import annotations


def cycles(edges: list[list[int]]) -> list[list[int]]:
    """One loop per group of steps that can reach each other: the shortest one through the
    group's first step, as the steps in order (``[0, 2]`` is 0 -> 2 -> 0), first steps ascending."""
    found = []
    for group in _strongly_connected(edges):
        start = min(group)
        if len(group) > 1 or start in edges[start]:
            found.append(_shortest_loop(edges, start, set(group)))
    return sorted(found)


def _shortest_loop(edges: list[list[int]], start: int, group: set[int]) -> list[int]:
    parent: dict[int, int | None] = {start: None}
    queue = [start]
    for node in queue:  # breadth first: the queue grows while it is read
        for target in edges[node]:
            if target == start:
                loop = [node]
                while (previous := parent[loop[-1]]) is not None:
                    loop.append(previous)
                return loop[::-1]
            if target in group and target not in parent:
                parent[target] = node
                queue.append(target)
    raise AssertionError("a strongly connected group always loops back to its start")


def _strongly_connected(edges: list[list[int]]) -> list[list[int]]:
    """Tarjan's algorithm, iterative so that a long flow cannot exhaust the recursion limit."""
    order = [-1] * len(edges)
    low = [0] * len(edges)
    on_stack = [False] * len(edges)
    stack: list[int] = []
    groups: list[list[int]] = []
    counter = 0
    for root in range(len(edges)):
        if order[root] != -1:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            node, next_edge = work[-1]
            if next_edge < len(edges[node]):
                work[-1] = (node, next_edge + 1)
                target = edges[node][next_edge]
                if order[target] == -1:
                    order[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack[target] = True
                    work.append((target, 0))
                elif on_stack[target]:
                    low[node] = min(low[node], order[target])
                continue
            work.pop()
            if work:
                caller = work[-1][0]
                low[caller] = min(low[caller], low[node])
            if low[node] == order[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    group.append(member)
                    if member == node:
                        break
                groups.append(group)
    return groups
