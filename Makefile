# Two entry points (README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow setup clean reference reference-resnet student ship web web-deps node-check wheel

# The shipped models' recipes are files in recipes/ (docs/training.md); `make reference` retrains the
# shipped ensemble end to end from them: its two networks, each exported with parity, then the ensemble.
# `make reference-resnet` retrains the resnet that ships beside them; `make student` distils one vgg
# net from the shipped ensemble (recipes/fer_student.toml, `make reference` first to rebuild the teacher). Training times and accuracies,
# per machine, are in docs/results.md. `make ship RUN=runs/NAME SHIP_NAME=NAME` exports an existing run
# with parity and copies it into artifacts/.
DATA ?= ../shared/fer2013
REFERENCE ?= runs/reference
RUN ?= $(REFERENCE)-vgg
SHIP_NAME ?= fer_vgg

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) demo/app.py

# `make web` serves the in-browser page (web/, docs/onnx.md#in-the-browser) on 127.0.0.1:$(WEB_PORT);
# `make web-deps` installs its pinned npm packages (ONNX Runtime Web, OpenCV.js), as CI does for its test.
WEB_PORT ?= 8000
WEB_NPM_STAMP := web/node_modules/.package-lock.json

$(WEB_NPM_STAMP): web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund

web-deps: $(WEB_NPM_STAMP)

web: $(STAMP) $(WEB_NPM_STAMP)
	$(PY) web/serve.py --port $(WEB_PORT)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

reference: $(STAMP)
	$(PY) -m fer_fastai.train --recipe recipes/fer_vgg.toml --data $(DATA) --out $(REFERENCE)-vgg
	$(PY) -m fer_fastai.train --recipe recipes/fer_seed.toml --data $(DATA) --out $(REFERENCE)-seed
	$(MAKE) ship RUN=$(REFERENCE)-vgg SHIP_NAME=fer_vgg
	$(MAKE) ship RUN=$(REFERENCE)-seed SHIP_NAME=fer_seed
	$(PY) -m fer_fastai.ensemble --recipe recipes/fer_ensemble.toml --data $(DATA) --out $(REFERENCE)-ensemble
	$(MAKE) ship RUN=$(REFERENCE)-ensemble SHIP_NAME=fer_ensemble

student: $(STAMP)
	$(PY) -m fer_fastai.train --recipe recipes/fer_student.toml --data $(DATA) --out $(REFERENCE)-student
	$(MAKE) ship RUN=$(REFERENCE)-student SHIP_NAME=fer_student

reference-resnet: $(STAMP)
	$(PY) -m fer_fastai.train --recipe recipes/fer_resnet.toml --data $(DATA) --out $(REFERENCE)-resnet
	$(MAKE) ship RUN=$(REFERENCE)-resnet SHIP_NAME=fer_resnet

ship: $(STAMP)
	mkdir -p artifacts/plots/$(SHIP_NAME)
	rm -f artifacts/plots/$(SHIP_NAME)/*.png
	cp $(RUN)/model.safetensors artifacts/$(SHIP_NAME).safetensors
	cp $(RUN)/model.json artifacts/$(SHIP_NAME).json
	cp $(RUN)/metrics.json artifacts/$(SHIP_NAME).metrics.json
	if [ -f $(RUN)/history.csv ]; then cp $(RUN)/history.csv artifacts/$(SHIP_NAME).history.csv; fi  # an ensemble has no training history
	cp $(RUN)/plots/*.png artifacts/plots/$(SHIP_NAME)/
	$(PY) -m export.to_onnx --weights artifacts/$(SHIP_NAME).safetensors --out artifacts/$(SHIP_NAME).onnx --data $(DATA) --int8
	$(PY) -m fer_fastai.evaluate artifacts/$(SHIP_NAME).onnx --data $(DATA) --split test --tta
	if [ -d artifacts/conformance/$(SHIP_NAME) ]; then $(PY) -m fer_fastai.conformance --model artifacts/$(SHIP_NAME).onnx --out artifacts/conformance/$(SHIP_NAME); fi  # the vectors follow the file

# onnxruntime-node reproduces the conformance vectors (docs/onnx.md#node). Its install would fetch the CUDA
# execution provider (hundreds of MB) on Linux x64; the check runs on the CPU, so that is skipped.
NODE_STAMP := node/node_modules/.installed

$(NODE_STAMP): node/package.json node/package-lock.json
	cd node && ONNXRUNTIME_NODE_INSTALL=skip ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

node-check: $(NODE_STAMP)
	for folder in artifacts/conformance/*/; do node node/check.mjs $$folder || exit 1; done

# The wheel (docs/onnx.md#the-python-wheel): the library with the default model inside, for `pip install` anywhere.
wheel: $(STAMP)
	$(PY) -m pip wheel --no-deps --no-build-isolation --quiet -w dist .
	ls -l dist/fer_fastai-*.whl

clean:
	rm -rf $(VENV) build *.egg-info
