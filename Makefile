# runbook.ops — the commands a user or CI runs. Each target installs what it needs first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.venv/collections
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: help bootstrap demo lab lab-down lab-status test sanity unit integration lint build bench clean

help:
	@echo "make demo       start the lab and run playbooks/demo.yml against it"
	@echo "make test       everything CI runs: sanity, unit, integration, molecule, ansible-lint, build"
	@echo "make lab        start the lab (real services on loopback) without running anything"
	@echo "make lab-down   stop the lab"
	@echo "make bench      benchmarks, each beside its baseline"

bootstrap:
	@scripts/bootstrap

lab: bootstrap
	@$(PY) -m tests.harness.lab up

lab-down:
	@$(PY) -m tests.harness.lab down

lab-status:
	@$(PY) -m tests.harness.lab status

demo: lab
	@ansible-playbook -i inventories/lab playbooks/demo.yml

test: bootstrap
	@scripts/test

sanity: bootstrap
	@scripts/sanity

# Unit tests need the venv and the Debian packages, not the Kubernetes binaries (a long build).
unit:
	@RUNBOOK_SKIP_K8S=1 scripts/bootstrap
	@$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

integration: bootstrap
	@$(PY) -m pytest tests/integration -q $(PYTEST_ARGS)

lint: bootstrap
	@ansible-lint --profile production

build: bootstrap
	@mkdir -p $(VENV)/build && ansible-galaxy collection build --force --output-path $(VENV)/build .

bench:
	@RUNBOOK_BENCH=1 scripts/bootstrap
	@scripts/bench

clean: lab-down
	rm -rf .lab $(VENV)/build tests/output
