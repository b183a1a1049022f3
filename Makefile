# Local development: `make run` starts the whole stack, `make test` runs the suite.
# Everything runs from the project virtualenv in .venv (created on first use).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install run test browser

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changes; the stamp lives inside the venv,
# so a fresh venv always gets a fresh install.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/nurture stack

# The console's browser tests drive Debian's Chromium through its chromedriver (never a browser
# download): installed from apt when absent (CI runs as root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver)

test: install browser
	$(VENV)/bin/python -m pytest -q --durations=25
