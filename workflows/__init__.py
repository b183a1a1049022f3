from workflows.bulk import BulkEnrollmentWorkflow
from workflows.enrollment import EnrollmentWorkflow
from workflows.scans import TriggerScanWorkflow

WORKFLOWS = [EnrollmentWorkflow, TriggerScanWorkflow, BulkEnrollmentWorkflow]

__all__ = ["WORKFLOWS", "BulkEnrollmentWorkflow", "EnrollmentWorkflow", "TriggerScanWorkflow"]
