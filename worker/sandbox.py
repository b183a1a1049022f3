"""Entering the workflow sandbox without compiling the workflow code again.

For global state isolation the sandbox imports a workflow's module (and the modules it imports
that are not passed through) afresh for every workflow run it starts. Python then reads each
module's bytecode from ``__pycache__``, or compiles the source when there is none: with
``PYTHONDONTWRITEBYTECODE`` set (the Dockerfile, many CI images) there is none, and compiling the
enrollment package for each new enrollment took about a tenth of the worker's CPU in a batch of new
enrollments. The finder here keeps the code object of each module of the workflow packages once it
is compiled; every later import executes that code object in the fresh module, exactly as a
``.pyc`` would, so isolation is unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterable
from types import CodeType

_code: dict[str, CodeType] = {}


class _CompiledOnceLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str) -> CodeType:
        code = _code.get(self.path)
        if code is None:
            code = _code[self.path] = super().get_code(fullname)
        return code


class _CompiledOnceFinder(importlib.abc.MetaPathFinder):
    def __init__(self, packages: frozenset[str]):
        self.packages = packages

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] not in self.packages:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _CompiledOnceLoader(spec.loader.name, spec.loader.path)
        return spec


def compile_workflows_once(packages: Iterable[str] = ("workflows",)) -> None:
    """Serve the modules of ``packages`` from compiled code kept in memory (idempotent)."""
    wanted = frozenset(packages)
    for finder in sys.meta_path:
        if isinstance(finder, _CompiledOnceFinder):
            finder.packages = finder.packages | wanted
            return
    sys.meta_path.insert(0, _CompiledOnceFinder(wanted))
