# The two set-up commands of the README: `make run` and `make test`. Both work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install demo serve clean chromium postgresql

run: install
	$(BIN)/heritage-match demo --if-empty
	$(BIN)/heritage-match serve

test: install chromium postgresql lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Gates before the tests: ruff (pyflakes, pycodestyle, import order) on all code, mypy on app/.
lint: install
	$(BIN)/ruff check app scripts tests
	$(BIN)/mypy

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

# The browser tests use the system's Chromium (Debian package `chromium`), installed when missing.
chromium:
	.ci/install-chromium

# The registry tests run on PostgreSQL too (Debian package `postgresql`, installed when missing; the tests start
# and remove their own server). Without it they skip, unless HM_REQUIRE_POSTGRES=1 (CI) makes that a failure.
postgresql:
	.ci/install-postgresql

clean:
	rm -rf $(VENV) .pytest_cache
