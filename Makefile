# Décroché — developer entry points. See README.md.
#
#   make test    virtualenv + ruff + mypy + pytest (what CI runs, via .ci/run)
#   make lint    ruff + mypy only
#   make demo    simulator + controller + dashboard on an embedded Redis
#   make bench   every bench/*.py --json, one JSON object per line on stdout
#
# The virtualenv lives in .venv and is (re)installed only when pyproject.toml
# is newer than .venv/.stamp; `make venv` forces nothing, `make clean` resets.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
# bench/ may not exist yet in a fresh clone; ruff fails on a missing path.
LINT_PATHS := ivr tests $(wildcard bench)

.PHONY: all venv test lint demo bench clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Lint and tests all run even when one fails, so that one run shows every
# problem; the target fails if any of them failed.
test: $(STAMP)
	@failed=""; \
	echo "+ ruff check $(LINT_PATHS)"; $(BIN)/ruff check $(LINT_PATHS) || failed="$$failed ruff"; \
	echo "+ mypy"; $(BIN)/mypy || failed="$$failed mypy"; \
	echo "+ pytest -q"; $(BIN)/pytest -q || failed="$$failed pytest"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi

lint: $(STAMP)
	@failed=""; \
	echo "+ ruff check $(LINT_PATHS)"; $(BIN)/ruff check $(LINT_PATHS) || failed="$$failed ruff"; \
	echo "+ mypy"; $(BIN)/mypy || failed="$$failed mypy"; \
	if [ -n "$$failed" ]; then echo "make lint: FAILED:$$failed" >&2; exit 1; fi

demo: $(STAMP)
	$(BIN)/ivr demo

# Files named bench/_*.py are helpers, not benchmarks. The name of each
# benchmark goes to stderr so that stdout stays pure JSON lines.
bench: $(STAMP)
	@set -e; found=0; \
	for f in bench/*.py; do \
		[ -f "$$f" ] || continue; \
		case "$${f##*/}" in _*) continue ;; esac; \
		found=1; echo "+ $(BIN)/python $$f --json" >&2; \
		$(BIN)/python "$$f" --json; \
	done; \
	[ "$$found" = 1 ] || echo "no benchmarks in bench/" >&2

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
