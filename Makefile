# Portrait — run `make help` for the targets.
PYTHON ?= python3.11
UV_VERSION := 0.13.9
VENV := .venv
UV := .tools/bin/uv
BIN := $(VENV)/bin
GEN := server/_gen/portrait/v1/portrait_pb2.py
export UV_PYTHON_DOWNLOADS := never

.PHONY: help install gen run test test-unit lint bench clean audit

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed $(GEN) ## create .venv with the locked dependencies and generate the gRPC code

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --python $(PYTHON)
	@touch $@

gen: $(GEN) ## regenerate server/_gen from protos/ (never edit the output)

$(GEN): protos/portrait/v1/portrait.proto $(VENV)/.installed
	rm -rf server/_gen && mkdir -p server/_gen/portrait/v1
	$(BIN)/python -m grpc_tools.protoc -Iserver/_gen=protos --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/portrait/v1/portrait.proto
	touch server/_gen/__init__.py server/_gen/portrait/__init__.py server/_gen/portrait/v1/__init__.py

run: install ## run the server (embedded Redis unless PORTRAIT_REDIS_URL is set)
	$(BIN)/portrait serve

test: install ## run the tests (unit, doctests, integration against real Redis/gRPC/Feast)
	$(BIN)/python -m pytest

test-unit: install ## the fast part: unit tests and doctests (no Redis, gRPC server, Feast or child process)
	$(BIN)/python -m pytest tests/unit server

lint: install ## ruff + mypy on hand-written code
	$(BIN)/ruff check server tests bench feature_repo
	$(BIN)/mypy server

# pip-audit asks PyPI's JSON API (https://pypi.org/pypi/NAME/VERSION/json) about every locked package.
# Where that API cannot be reached the audit is skipped with a loud notice (no network must not fail CI);
# where it can, a known vulnerability or a package it could not check fails the target (--strict).
AUDIT_REQUIREMENTS := $(VENV)/audit-requirements.txt
define AUDIT_PROBE
import sys, urllib.request
url = "https://pypi.org/pypi/pip-audit/2.10.1/json"
try:
    urllib.request.urlopen(url, timeout=15).read(1)
except Exception as exc:
    print(f"audit: SKIPPED - dependencies NOT audited: PyPI's vulnerability API is unreachable ({url}: {exc})",
          file=sys.stderr)
    sys.exit(1)
endef
export AUDIT_PROBE

audit: install ## pip-audit the locked dependencies (fails on a known vulnerability)
	@if $(BIN)/python -c "$$AUDIT_PROBE"; then \
		$(UV) export --frozen --all-groups --no-emit-project --format requirements-txt --quiet \
			--output-file $(AUDIT_REQUIREMENTS) && \
		$(BIN)/pip-audit --strict --require-hashes --disable-pip --vulnerability-service pypi \
			--progress-spinner off --requirement $(AUDIT_REQUIREMENTS); \
	fi

bench: install ## run the benchmarks (table on stdout, JSON in bench/results/)
	$(BIN)/python -m bench

clean: ## remove the venvs, generated code and local data
	rm -rf $(VENV) .tools server/_gen var
