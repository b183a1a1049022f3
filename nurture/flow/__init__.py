from nurture.flow.language import FlowDefinition, Step
from nurture.flow.validation import FlowInvalid, Problem, load_flow, parse_flow_text

__all__ = ["FlowDefinition", "FlowInvalid", "Problem", "Step", "load_flow", "parse_flow_text"]
