"""Reads the wall clock at import: not deterministic, so never imported inside the sandbox."""

from datetime import datetime

IMPORTED_AT = datetime.now()
