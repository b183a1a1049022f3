"""The flow simulator: the real EnrollmentWorkflow on a private time-skipping server, with stand-in activities.

It sits beside ``api`` and ``worker``, above ``workflows`` and ``activities``: the domain
(``nurture``) describes what a simulation takes and answers (nurture/simulation_models.py)
and never imports this package.
"""
