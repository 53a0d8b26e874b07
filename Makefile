# Two entry points (README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow setup clean reference reference-resnet ship

# The shipped reference model is an ensemble of two networks trained from scratch. `make reference`
# retrains it end to end: the vgg net (121.3 minutes of training measured on 2 bf16 CPU cores, 91
# s/epoch) and the seed net (21.3 minutes measured there, 24.0 in a rerun), each exported with
# parity, then their ensemble over 9 shifted views of each face (ENSEMBLE_ARGS): 142.6 CPU-minutes of
# training in all, within the project's 150 (exports and evaluations come on top, not timed on that
# machine). The same machine kind ran ~1.3x slower on 2026-11-29 (README, Speed): ≈ 182 minutes then.
# Without native bf16 it is hours: a 2-core AVX2 CPU (fp32, 2026-12-01) trained the vgg net at 50 img/s
# through fastai (`python bench/train_throughput.py --arch vgg --width 48 --steps 20 --rounds 1`),
# ≈ 11.5 hours for its 80 epochs.
# `make reference-resnet` retrains the resnet that ships beside them (`fer_resnet`, 44.6 minutes
# measured on such a machine): paired with the vgg net it scored higher, but the pair's 166 minutes
# are over the budget (README, Ensembles).
# `make ship RUN=runs/NAME SHIP_NAME=NAME` exports an existing run with parity and copies it in.
# The vgg and seed nets were trained while a bug kept flips, rotations and zooms out of training
# (see README); AS_SHIPPED repeats the augmentation they really had, so their numbers reproduce (the
# resnet, trained later, was given the same augmentation on purpose, to match its partner).
DATA ?= ../shared/fer2013
AS_SHIPPED := --no-flip --max-rotate 0 --max-zoom 1.0
VGG_ARGS ?= --arch vgg --width 48 --mixup 0.4 --max-shift 4 --epochs 80 $(AS_SHIPPED)
RESNET_ARGS ?= --arch resnet --mixup 0.4 --max-shift 4 --start-size 32 --epochs 70 $(AS_SHIPPED)
SEED_ARGS ?= --arch seed --mixup 0.4 --max-shift 4 --epochs 50 $(AS_SHIPPED)
ENSEMBLE_ARGS ?= --shifts 1
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

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

reference: $(STAMP)
	$(PY) -m fer_fastai.train --data $(DATA) --out $(REFERENCE)-vgg $(VGG_ARGS)
	$(PY) -m fer_fastai.train --data $(DATA) --out $(REFERENCE)-seed $(SEED_ARGS)
	$(MAKE) ship RUN=$(REFERENCE)-vgg SHIP_NAME=fer_vgg
	$(MAKE) ship RUN=$(REFERENCE)-seed SHIP_NAME=fer_seed
	$(PY) -m fer_fastai.ensemble artifacts/fer_vgg.safetensors artifacts/fer_seed.safetensors --data $(DATA) --out $(REFERENCE)-ensemble $(ENSEMBLE_ARGS)
	$(MAKE) ship RUN=$(REFERENCE)-ensemble SHIP_NAME=fer_ensemble

reference-resnet: $(STAMP)
	$(PY) -m fer_fastai.train --data $(DATA) --out $(REFERENCE)-resnet $(RESNET_ARGS)
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

clean:
	rm -rf $(VENV) build *.egg-info
