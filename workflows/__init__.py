from workflows.enrollment import EnrollmentWorkflow

WORKFLOWS = [EnrollmentWorkflow]

__all__ = ["WORKFLOWS", "EnrollmentWorkflow"]
