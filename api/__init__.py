"""The HTTP API: contacts, templates, flows, events and enrollments over REST/JSON.

Error bodies (also in docs/api.md):

* 422 - FastAPI's validation format, ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``,
  for every kind of bad input: request fields, template syntax (``loc: ["body", "html"]``)
  and flow problems. A flow problem's ``loc`` starts with ``"body"`` when it is in the
  request, ``"definition"`` when it is in a stored version being activated; the item
  also carries ``path``, the flow-language path (``steps[2].template``) that
  ``POST /flows/validate`` reports.
* 404 / 409 / 415 / 503 - ``{"detail": "<what went wrong>"}``. 503 means Temporal or the
  database is unreachable; nothing was committed.
"""
