"""Entering the workflow sandbox without compiling the workflow code again.

For global state isolation the sandbox imports a workflow's module (and the modules it imports
that are not passed through) afresh for every workflow run it starts. Python then reads each
module's bytecode from ``__pycache__``, or compiles the source when there is none: with
``PYTHONDONTWRITEBYTECODE`` set (the Dockerfile, many CI images) there is none, and compiling the
enrollment package for each new enrollment took about a tenth of the worker's CPU in a batch of new
enrollments. The finder here keeps the code object of each module of the workflow packages once it
is compiled; every later import executes that code object in the fresh module, exactly as a
``.pyc`` would, so isolation is unchanged. The finder also keeps where each of those modules was
found, so a new run does not look for them on disk again.

``SandboxRunner`` (the worker's ``workflow_runner``) is the SDK's sandboxed runner, entered less
often: see "the sandbox's own calls" below.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterable
from types import CodeType

import temporalio.workflow
from temporalio.worker._workflow_instance import WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, _importer, _runner

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
        # Where each module of the packages was found: a new run imports them all again, and
        # PathFinder would look for each on disk again (a stat per path entry).
        self._found: dict[tuple[str, tuple[str, ...]], tuple[_CompiledOnceLoader, list[str] | None]] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] not in self.packages:
            return None
        key = (fullname, tuple(path or ()))
        found = self._found.get(key)
        if found is not None:
            loader, locations = found
            # A new spec each time: the import machinery writes into the one it gets.
            return importlib.util.spec_from_file_location(
                fullname, loader.path, loader=loader, submodule_search_locations=locations
            )
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
            spec.loader = _CompiledOnceLoader(spec.loader.name, spec.loader.path)
            locations = list(spec.submodule_search_locations) if spec.submodule_search_locations is not None else None
            self._found[key] = (spec.loader, locations)
        return spec


def compile_workflows_once(packages: Iterable[str] = ("workflows",)) -> None:
    """Serve the modules of ``packages`` from compiled code kept in memory (idempotent)."""
    wanted = frozenset(packages)
    for finder in sys.meta_path:
        if isinstance(finder, _CompiledOnceFinder):
            finder.packages = finder.packages | wanted
            return
    sys.meta_path.insert(0, _CompiledOnceFinder(wanted))


# --- the sandbox's own calls, made cheaper -------------------------------------------------------
#
# Entering the sandbox swaps sys.modules, __import__ and the restricted builtins in and out. The
# SDK enters it for every workflow activation (the workflow's code: it must) but also each time it
# encodes a payload, to ask the workflow instance for its serialization context: about thirty
# times per enrollment, more CPU than the activations themselves took. That question is answered
# by the SDK's own instance code from its info and pending commands, no workflow code and no
# import, so it is asked directly here. And each new run's import of a module that is passed
# through (temporalio, pydantic, nurture.contracts under ``imports_passed_through``) left the
# sandbox to ``importlib.import_module`` a module the host has loaded already: that module is
# taken from the host's ``sys.modules`` instead. Which modules pass through is decided as before,
# by the SDK, at every import; a module that does not pass through (the workflow's own) is still
# imported afresh for every run, and the restrictions still apply to it.


class _PassThroughLoadedImporter(_importer.Importer):
    def _maybe_passthrough_module(self, name: str) -> types.ModuleType | None:
        if temporalio.workflow.unsafe.is_imports_passed_through() or self.module_configured_passthrough(name):
            loaded = _importer._thread_local_sys_modules.orig.get(name)
            if loaded is not None:
                return loaded
        return super()._maybe_passthrough_module(name)


class _Instance(_runner._Instance):
    def _create_instance(self) -> None:
        self.importer.__class__ = _PassThroughLoadedImporter
        super()._create_instance()

    def _in_sandbox(self):
        return self.globals_and_locals["__temporal_in_sandbox"].instance

    def get_serialization_context(self, command_info):
        return self._in_sandbox().get_serialization_context(command_info)

    def get_external_store_context(self, command_info):
        return self._in_sandbox().get_external_store_context(command_info)


@dataclasses.dataclass(frozen=True)
class SandboxRunner(SandboxedWorkflowRunner):
    """The SDK's sandboxed runner (same restrictions, same isolation per run), with the two
    shortcuts above."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _Instance(det, self.runner_class, self.restrictions)
