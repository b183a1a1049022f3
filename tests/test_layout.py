"""The layout's rules, read from the source (nothing is imported or run): which package may import
which, routers that stand alone, and event-type names defined in one place (nurture/event_types.py).

Imports point one way: nurture (the domain) <- workflows, activities <- simulation <- api; the worker
sits beside the API. Nothing but the entry points themselves and the tests imports ``api`` or ``worker``
(the ``nurture stack`` command starts them as processes, by name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import nurture.event_types

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nurture", "activities", "workflows", "simulation", "api", "worker")

# What each package must not import (top-level package names).
FORBIDDEN = {
    "nurture": {"activities", "workflows", "simulation", "api", "worker"},
    "activities": {"simulation", "api", "worker"},
    "workflows": {"simulation", "api", "worker"},
    "simulation": {"api", "worker"},
    "api": {"worker"},
    "worker": {"api", "simulation"},
}

EVENT_TYPES_MODULE = ROOT / "nurture" / "event_types.py"
# Sets the enrollment workflow still defines itself until its rewrite imports nurture.event_types:
# remove the entry then (the test below says so once the file no longer has one).
PENDING_EVENT_SETS: set[str] = set()
KNOWN_EVENT_TYPES = {
    value for name, value in vars(nurture.event_types).items() if name.isupper() and isinstance(value, str)
}


def source_files(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import statement names, anywhere in the file (inside functions and
    ``if TYPE_CHECKING:`` too); ``from a import b`` names both ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package, one level up per extra dot
                package = module_of(path).split(".")[: None if path.name == "__init__.py" else -1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_each_package_imports_only_what_lies_below_it():
    offenders = sorted(
        f"{where(path, line)} imports {name}"
        for package, forbidden in FORBIDDEN.items()
        for path in source_files(package)
        for line, name in imports(path)
        if name.split(".")[0] in forbidden
    )
    assert offenders == []


def test_every_package_is_known_to_the_layout_rules():
    # A new top-level package must say what it may import (and be in pyproject's packages list).
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert found == set(PACKAGES)
    assert set(FORBIDDEN) == set(PACKAGES)


def test_a_router_never_imports_another_router():
    offenders = sorted(
        f"{where(path, line)} imports {name}"
        for path in source_files("api/routers")
        for line, name in imports(path)
        if path.name != "__init__.py" and (name == "api.routers" or name.startswith("api.routers."))
    )
    assert offenders == []


def event_type_collections(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Literal sets, lists, tuples and dict keys holding two or more of the engine's event types."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Set | ast.List | ast.Tuple):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [key for key in node.keys if key is not None]
        else:
            continue
        named = [i.value for i in items if isinstance(i, ast.Constant) and i.value in KNOWN_EVENT_TYPES]
        if len(named) >= 2:
            yield node.lineno, named


def test_event_type_sets_are_defined_only_in_nurture_event_types():
    assert {"email_opened", "email_clicked", "unsubscribed"} <= KNOWN_EVENT_TYPES  # the scan looks for something
    offenders = sorted(
        f"{where(path, line)} lists {', '.join(named)}: use nurture/event_types.py"
        for path in source_files(*PACKAGES)
        if path != EVENT_TYPES_MODULE and str(path.relative_to(ROOT)) not in PENDING_EVENT_SETS
        for line, named in event_type_collections(path)
    )
    assert offenders == []


def test_the_pending_exceptions_are_still_needed():
    stale = sorted(
        name for name in PENDING_EVENT_SETS
        if not (ROOT / name).exists() or not any(event_type_collections(ROOT / name))
    )
    assert stale == [], f"{stale} no longer define event-type sets: remove them from PENDING_EVENT_SETS"


def test_the_scans_see_what_they_look_for(tmp_path):
    # The scanners on a file that breaks every rule, so a scanner that sees nothing cannot pass.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from api.routers.flows import FlowId\n"
        "def later():\n"
        "    import workflows.enrollment\n"
        "OPENS = {'email_opened': 'opened', 'email_clicked': 'clicked'}\n"
    )
    assert [name for _, name in imports(sample)] == ["api.routers.flows", "api.routers.flows.FlowId", "workflows.enrollment"]
    assert [named for _, named in event_type_collections(sample)] == [["email_opened", "email_clicked"]]
