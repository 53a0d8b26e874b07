# Two entry points (README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow setup clean reference ship

# The shipped reference model: `make reference` retrains it end to end (measured: 121 minutes of
# training on 2 CPU cores, 91 s/epoch, then ~2 minutes of plots, export and evaluation);
# `make ship RUN=runs/NAME` exports an existing run with parity and copies it in.
DATA ?= ../shared/fer2013
REFERENCE_ARGS ?= --arch vgg --width 48 --mixup 0.4 --max-shift 4 --epochs 80
RUN ?= runs/reference
SHIP_NAME ?= fer_vgg

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) demo/app.py

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

reference: $(STAMP)
	$(PY) -m fer_fastai.train --data $(DATA) --out $(RUN) $(REFERENCE_ARGS)
	$(MAKE) ship RUN=$(RUN)

ship: $(STAMP)
	mkdir -p artifacts/plots/$(SHIP_NAME)
	rm -f artifacts/plots/$(SHIP_NAME)/*.png
	cp $(RUN)/model.safetensors artifacts/$(SHIP_NAME).safetensors
	cp $(RUN)/model.json artifacts/$(SHIP_NAME).json
	cp $(RUN)/metrics.json artifacts/$(SHIP_NAME).metrics.json
	cp $(RUN)/history.csv artifacts/$(SHIP_NAME).history.csv
	cp $(RUN)/plots/*.png artifacts/plots/$(SHIP_NAME)/
	$(PY) -m export.to_onnx --weights artifacts/$(SHIP_NAME).safetensors --out artifacts/$(SHIP_NAME).onnx --data $(DATA) --int8
	$(PY) -m fer_fastai.evaluate artifacts/$(SHIP_NAME).onnx --data $(DATA) --split test --tta

clean:
	rm -rf $(VENV) build *.egg-info
