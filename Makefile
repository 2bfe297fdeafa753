# Every target bootstraps .venv on first use, so a fresh clone needs nothing but python3 >= 3.11 (Sionna 2, the separation baseline's LDPC library, needs it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: venv study smoke test table1-cpu bench bench-gpu gpu-check lock clean

venv: $(STAMP)

# constraints.txt pins every package to the versions the suite passed with (make lock upgrades it). uv
# installs them (pip only bootstraps it): 6.5 GB, most of it torch's CUDA build, in about 50 s from an empty
# cache where pip took 127 s here; bytecode compiled at install, as pip does. pip is the fallback, for a
# machine whose index only pip is configured for (uv does not read pip.conf; UV_INDEX_URL points it there).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	($(PIP) uv && $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e '.[test,cluster]') || \
	  $(PIP) -e '.[test,cluster]'
	touch $(STAMP)

lock:   ## upgrade constraints.txt to the newest versions pyproject.toml allows (then: make test, and commit it)
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	{ echo "# The versions the test suite passed with (make test, $$(date +%Y-%m-%d), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'), $$(uname -s) $$(uname -m))."; \
	  echo "# make and .ci/run install with these (pip -c); pyproject.toml keeps ranges for other environments."; \
	  echo "# torch==X matches both its CUDA build (PyPI) and its CPU build (X+cpu); the nvidia-* and triton pins"; \
	  echo "# apply only where the CUDA build pulls them in. Upgrade: make lock (then make test, and commit it)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

study: $(STAMP)   ## the default study: digits on the local machine (a few minutes on 2 CPUs)
	$(PY) studies/ablation.py $(ARGS)

smoke: $(STAMP)   ## the default study shrunk to a few tiny trials through both phases, to check an install
	$(PY) studies/ablation.py --smoke $(ARGS)

# the whole of Table 1 at a 2-CPU budget (search_spaces/table1_cpu.yaml); its results and MLflow store
# live outside the checkout, so a fresh clone keeps them; `make table1-cpu ARGS=--resume` finishes an
# interrupted run
STUDIES_HOME ?= $(HOME)/iabf-studies
table1-cpu: $(STAMP)   ## Table 1 on a laptop (about 2 hours on 2 CPUs; DATA_DIR: the four datasets, default ../shared/data)
	mkdir -p $(STUDIES_HOME)
	$(PY) studies/ablation.py --space search_spaces/table1_cpu.yaml --data-dir $${DATA_DIR:-../shared/data} \
	    --storage $(STUDIES_HOME)/results --tracking-uri sqlite:///$(STUDIES_HOME)/mlflow.db $(ARGS)

# the suite in TEST_WORKERS processes (pytest-xdist). Its end-to-end tests are mostly one-core work that also
# waits (Ray and MLflow starting and stopping, SLURM and the autoscaler polling): two workers on two cores left
# 0.35 of them idle (1.65 busy, 978 s of tests here); three keep them busy (1.86) and took 922 s (with each test
# process at one OpenMP thread, tests/conftest.py: 854 s, 1.88 busy). A file goes whole to one worker (loadfile:
# a module's fixture is built once), the longest first (tests/conftest.py, from tests/durations.json: make test
# ARGS=--store-durations measures it again). TEST_WORKERS=0: one process.
# (Not --dist loadgroup: with pytest 9.2 it silently stops grouping, pytest-xdist issue 1386.)
TEST_WORKERS ?= 3
# The project's own modules compiled first: where PYTHONDONTWRITEBYTECODE is set, every driver, trial and
# command the suite starts would compile them again (0.4 s a study's driver).
test: $(STAMP)    ## the test suite (finds real data in IABF_DATA_DIR, default ../shared/data)
	$(PY) -m compileall -q -j 0 iabf studies analysis
	IABF_DATA_DIR=$${IABF_DATA_DIR:-$(abspath ../shared/data)} $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

bench: $(STAMP)   ## the benchmarks of benchmarks/README.md (DATA_DIR: real MNIST, default ../shared/data)
	$(PY) benchmarks/throughput.py --data-dir $${DATA_DIR:-../shared/data}
	$(PY) benchmarks/datasets.py --data-dir $${DATA_DIR:-../shared/data}
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/study_cost.py --data-dir $${DATA_DIR:-../shared/data}
	$(PY) benchmarks/packing.py --data-dir $${DATA_DIR:-../shared/data}
	$(PY) benchmarks/sequential.py
	$(PY) benchmarks/stacked_seeds.py --data-dir $${DATA_DIR:-../shared/data}
	$(PY) benchmarks/compile.py --data-dir $${DATA_DIR:-../shared/data}

bench-gpu: $(STAMP)   ## the GPU measurements still missing from benchmarks/README.md (needs a CUDA device)
	$(PY) benchmarks/throughput.py --data-dir $${DATA_DIR:-../shared/data} --device cuda
	$(PY) benchmarks/packing.py --data-dir $${DATA_DIR:-../shared/data}
	$(PY) benchmarks/sequential.py
	$(PY) benchmarks/stacked_seeds.py --data-dir $${DATA_DIR:-../shared/data} --device cuda
	$(PY) benchmarks/compile.py --data-dir $${DATA_DIR:-../shared/data} --device cuda

gpu-check: $(STAMP)   ## on a lent GPU: the cuda tests and every GPU figure at reduced repeats, into $$OUT (benchmarks/gpu_check.sh)
	OUT=$${OUT:-gpu-check} DATA_DIR=$${DATA_DIR:-../shared/data} PY=$(PY) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) .venv-lock *.egg-info
