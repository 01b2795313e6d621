# model-traffic-operator: every target uses the project virtualenv .venv, created on demand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCAL := .local
export KUBECONFIG ?= $(CURDIR)/$(LOCAL)/kubeconfig
# The Gateway the local stack (make cluster, make demo) has Envoy Gateway accept: model_traffic_dev.localcluster.DEFAULT_GATEWAY.
LOCAL_GATEWAY := envoy-gateway-system/ai-gateway
PYTEST_ARGS ?=

IMAGE ?= model-traffic-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: help prerequisites venv lock binaries helm chart-lint crds docs lint unit test demo cluster cluster-down run bench chaos clean image release

help:
	@echo "make demo          local control plane + operator + examples, ends with kubectl get"
	@echo "make test          lint, unit and cluster tests (what CI runs)"
	@echo "make bench         time to Ready for 2,000 backends + 2,000 VirtualModels + 200 TrafficConfigs, the floor, requests (BENCH_ARGS)"
	@echo "make chaos         SIGKILL the operator CHAOS_KILLS (100) times during rollouts of every strategy; invariants and figures"
	@echo "make cluster       keep a local stack running: control plane, fake nodes, Envoy Gateway, AI Gateway, KServe"
	@echo "                   (.local/kubeconfig); make cluster-down stops it"
	@echo "make run           run the operator in the foreground against \$$KUBECONFIG (MTO_DEFAULT_GATEWAY defaults to"
	@echo "                   $(LOCAL_GATEWAY), the local stack's Gateway)"
	@echo "make chart-lint    helm lint + template of charts/model-traffic-operator (builds helm from Go modules)"
	@echo "make crds          regenerate crds/ from the kinds' specs, operator/model_traffic/kinds/*/spec.py (and docs/api.md)"
	@echo "make docs          regenerate the generated parts of docs/ and the chart's Argo CD scripts (files/argocd/)"
	@echo "make image         build the container image (Docker with BuildKit; IMAGE=name:tag)"
	@echo "make lock          requirements/*.txt: every dependency pinned with its hashes (LOCK_ARGS=--upgrade to move)"
	@echo "make release       dist/: the packaged chart, a chart of the CRDs, install.yaml, image.txt, SHA256SUMS"
	@echo "                   (RELEASE_IMAGE_REPOSITORY=registry/name; the tag is the project version)"

# The venv holds exactly what requirements/ pins (make lock), each file checked against its hashes: pip and the
# build backend, then every dependency of the project and of its development. The project itself follows, editable,
# with nothing resolved or downloaded; pip check fails when pyproject.toml needs what the lock lacks. The venv finds
# tools/model_traffic_dev (development tooling: not part of the wheel) through a .pth file.
LOCKS := requirements/build.txt requirements/runtime.txt requirements/dev.txt
$(VENV)/.locked: $(LOCKS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/build.txt
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.txt
	@touch $@

$(VENV)/.installed: $(VENV)/.locked pyproject.toml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "model_traffic_dev.pth").write_text("$(CURDIR)/tools\n")'
	$(PY) -m pip check || { echo "pyproject.toml needs a package requirements/ lacks: make lock" >&2; exit 1; }
	@touch $@

venv: $(VENV)/.installed

# requirements/*.txt from pyproject.toml, resolved by uv (a dev dependency, so itself pinned) for every platform:
# runtime.txt (the image installs it), dev.txt (runtime.txt's pins plus the dev extra: make venv), build.txt (pip and
# the build backend). Pins already there are kept: LOCK_ARGS=--upgrade moves all, --upgrade-package NAME one.
# tests/unit/test_lock.py fails when pyproject.toml asks for a package the lock lacks.
LOCK_PYTHON := 3.11
LOCK = $(VENV)/bin/uv pip compile --quiet --universal --python-version $(LOCK_PYTHON) --generate-hashes \
	--custom-compile-command "make lock" $(LOCK_ARGS)

lock: $(VENV)/.locked
	$(LOCK) pyproject.toml --output-file requirements/runtime.txt
	$(LOCK) pyproject.toml --extra dev --constraint requirements/runtime.txt --output-file requirements/dev.txt
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], "pip", sep="\n")' \
	  | $(LOCK) - --output-file requirements/build.txt

binaries: venv
	$(PY) -m model_traffic_dev.localcluster build

ENSURE_HELM = $(PY) -c 'from model_traffic_dev.localcluster.build import ensure_helm; print(ensure_helm())'

helm: venv
	$(ENSURE_HELM)

chart-lint: helm
	"$$($(ENSURE_HELM))" lint --strict charts/model-traffic-operator
	"$$($(ENSURE_HELM))" template model-traffic-operator charts/model-traffic-operator --namespace model-traffic-system > /dev/null

crds: venv
	$(PY) -m model_traffic_dev.crdgen
	cp crds/*.yaml charts/model-traffic-operator/crds/
	$(PY) -m model_traffic_dev.docgen

docs: venv
	$(PY) -m model_traffic_dev.docgen

lint: venv
	$(VENV)/bin/ruff check operator tests tools
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# Prometheus, Lua and iproute2 from Debian when missing (as root), or a clear refusal naming the command.
prerequisites:
	bash tools/test-prerequisites.sh

# Two pytest workers, each with its own local stack (started in ~22 s, warm): the suite spends
# more than half its time waiting on controllers, so two took 642 s where one took 1,025 s (1,028 tests). A file
# stays on one worker (its module fixtures are made once). PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 2

test: prerequisites lint binaries helm
	$(PY) -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: binaries
	MTO_DEFAULT_GATEWAY="$${MTO_DEFAULT_GATEWAY:-$(LOCAL_GATEWAY)}" $(PY) -m model_traffic_dev.demo

bench: binaries
	$(PY) tools/bench.py $(BENCH_ARGS)

# tests/chaos at length: rounds of eight rollouts (four strategies, passing and failing analysis) until CHAOS_KILLS
# SIGKILLs of the operator; prints the figures and writes them to .local/chaos.json (make test runs a few kills).
CHAOS_KILLS ?= 100
chaos: binaries helm
	MTO_CHAOS_KILLS=$(CHAOS_KILLS) MTO_CHAOS_REPORT=$(LOCAL)/chaos.json $(PY) -m pytest tests/chaos -q -s -ra $(PYTEST_ARGS)

cluster: binaries
	$(PY) -m model_traffic_dev.localcluster up --dir $(LOCAL) --crds crds

cluster-down: venv
	$(PY) -m model_traffic_dev.localcluster down --dir $(LOCAL)

run: venv
	MTO_DEFAULT_GATEWAY="$${MTO_DEFAULT_GATEWAY:-$(LOCAL_GATEWAY)}" $(PY) -m model_traffic run

image:
	docker build --tag $(IMAGE) .
	docker run --rm --read-only $(IMAGE) --help >/dev/null

RELEASE_IMAGE_REPOSITORY ?= model-traffic-operator

# Into dist/ (gitignored): see tools/release.py. Then: make image IMAGE="$(cat dist/image.txt)", and push it.
release: helm
	$(PY) tools/release.py --helm "$$($(ENSURE_HELM))" --image-repository "$(RELEASE_IMAGE_REPOSITORY)"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
