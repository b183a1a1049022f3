"""The enrollment workflow: ``workflow`` (the class, its handlers and run loop), ``state`` (the
pure reducer of what it knows), ``steps`` (one handler per step family) and ``calls`` (its
activities, called by method)."""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from nurture.search_attributes import SEARCH_ATTRIBUTE_KEYS as SEARCH_ATTRIBUTES
from workflows.enrollment.workflow import EnrollmentWorkflow

__all__ = ["SEARCH_ATTRIBUTES", "EnrollmentWorkflow"]
