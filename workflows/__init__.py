from workflows.bulk import BulkEnrollmentWorkflow
from workflows.crm_sync import CrmSyncWorkflow
from workflows.enrollment import EnrollmentWorkflow
from workflows.scans import TriggerScanWorkflow

WORKFLOWS = [EnrollmentWorkflow, TriggerScanWorkflow, BulkEnrollmentWorkflow, CrmSyncWorkflow]

__all__ = ["WORKFLOWS", "BulkEnrollmentWorkflow", "CrmSyncWorkflow", "EnrollmentWorkflow", "TriggerScanWorkflow"]
