# Two entry points for a fresh machine (see README):  make demo  |  make test
# Each creates .venv, installs the CPU torch wheel first (a bare `torch` pulls GBs of CUDA), then the package.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTRITON := 0.7.0

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,quant,serve]'
	# serve: PyTriton without its numpy<2 pin (meant for its stub, which gets its own numpy 1.x: runtime/serve.py)
	$(PY) -m pip install --quiet --no-deps nvidia-pytriton==$(PYTRITON)
	$(VENV)/bin/latentfuse serve --prepare
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentfuse demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) out
