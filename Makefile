# mscnn-edge: a thin Makefile over the Python API. Every target sets up what it needs.
# `make test` and (with the compile stage) `make build` are the two commands a fresh
# machine needs; see README.md.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv test lint format clean distclean build toolchains print-bundles runners \
        parity package bench bench-long tune tflm FORCE

help:
	@echo "make build   set up, compile the default model for every target and lead variant,"
	@echo "             check parity, print the summary (TARGETS= VARIANTS= PRESET= CHECKPOINT="
	@echo "             PRECISION=fp32|int8|fp16; default: fp32, plus the detector in int8 and fp16)"
	@echo "make parity  check every bundle in build/: x86 in-process, ARM under qemu with"
	@echo "             the native runner, CUDA only where a GPU is present (QEMU_CASES=N:"
	@echo "             the first N golden cases of each bundle under qemu, for large models)"
	@echo "make package TARGET=aarch64   a tarball of the runner, runtime and bundles"
	@echo "             (SIGNING_KEY=KEY: signed bundles, a runner that trusts KEY.pub alone,"
	@echo "             TARBALL.sig; make build SIGNING_KEY=KEY signs each bundle's manifest)"
	@echo "make package TARGET=cortex-m7 the streaming detector for a Cortex-M (M4, M55 too): library,"
	@echo "             headers, example firmware, proven under qemu-system-arm (MCU_HOP=200,"
	@echo "             MCU_PRECISION=int8 for the int8 step)"
	@echo "make runners build the native runner for x86_64, aarch64 and armv7"
	@echo "make tflm    the detector through TensorFlow Lite Micro beside our int8 build (build/tflm/)"
	@echo "make bench   PyTorch vs ONNX Runtime vs ExecuTorch vs LiteRT vs TVM latency on this"
	@echo "             machine (THREADS=, PEERS=litert,executorch; the CRNN seq_lab_crnn too), and"
	@echo "             the detector streamed (hops 64/128/512) vs a 10 s window every hop, and"
	@echo "             int8: ours vs ONNX Runtime int8 and fp32 (latency, accuracy, peaks), with"
	@echo "             LiteRT and ExecuTorch (XNNPACK) as peers in venvs of their own (PEERS=)"
	@echo "make bench-long  1, 6 and 24 hours of ECG through the detector: seconds per hour and"
	@echo "             peak memory, Python (stream and window bundles) and mscnn-run (LONG_MINUTES=)"
	@echo "make tune TARGET=x86_64   tune the conv kernels, write compile/tuning/<target>/"
	@echo "             (RPC_TRACKER=host:port RPC_KEY=key: measure on a device)"
	@echo "make train   retrain the demo QRS detector (deterministic) and check it reproduces"
	@echo "             mscnn/weights/cpsc2019_qrs.pt (MODEL=crnn: the detector with a small"
	@echo "             bidirectional LSTM head, MODEL=crnn-uni: unidirectional); make evaluate:"
	@echo "             5-fold cross-validation of EVAL_MODELS=cnn,crnn on the same folds"
	@echo "make test    set up .venv and run the test suite"
	@echo "make mutation  mutation testing of the fast tests (MUTATION_BUDGET= seconds)"
	@echo "make lint    ruff lint and format check"
	@echo "make format  apply ruff formatting"
	@echo "make clean   remove build outputs and caches (keeps .venv)"
	@echo "make distclean  also remove .venv"

# The virtualenv is rebuilt whenever pyproject.toml (and so a pin) changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: mscnn-edge needs Python 3.11 (torch 2.13.0 CPU wheel and apache-tvm 0.27 pins); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

venv: $(STAMP)

# TensorFlow Lite for Microcontrollers, for the side-by-side only (compile/bench/tflm.py): a
# virtualenv of its own, since TensorFlow's pins are not ours.
TFLM_VENV     := .venv-tflm
TFLM_STAMP    := $(TFLM_VENV)/.installed
TFLM_PACKAGES := tensorflow-cpu==2.21.0 tflite-micro==0.dev20261023182759
$(TFLM_STAMP):
	$(PYTHON) -m venv $(TFLM_VENV)
	$(TFLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(TFLM_PACKAGES)
	@touch $@

# The benchmark's peers (compile/bench/peers.py), each in a virtualenv of its own: LiteRT
# runs in .venv-tflm (tensorflow-cpu); ExecuTorch in .venv-executorch, since executorch
# pins torchao and coremltools that we do not, with the torch we pin (its compiled runtime
# links libtorch; torch==2.13.0 takes the CPU wheel). About 1.5 GB and 5 minutes.
ET_VENV     := .venv-executorch
ET_STAMP    := $(ET_VENV)/.installed
ET_PACKAGES := torch==2.13.0 executorch==1.5.1
$(ET_STAMP):
	$(PYTHON) -m venv $(ET_VENV)
	$(ET_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(ET_PACKAGES)
	@touch $@

PEERS ?= litert,executorch

# make tflm: the trained detector through TFLM beside our int8 build (build/tflm/).
tflm: $(STAMP) $(TFLM_STAMP)
	$(PY) -m compile.bench.tflm --out $(BUILD)/tflm

# --------------------------------------------------------------------------------------
# Cross toolchains and qemu-user (Debian packages), installed when run as root; and
# libsodium (the native runner's signature checks, linked statically) for each runner
# architecture, the ARM ones through Debian's multiarch (dpkg --add-architecture).
APT_PACKAGES := g++ g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm llvm \
                libsodium-dev libsodium-dev:arm64 libsodium-dev:armhf
TOOLS        := g++ aarch64-linux-gnu-g++ arm-linux-gnueabihf-g++ qemu-aarch64 qemu-arm arm-none-eabi-gcc qemu-system-arm llvm-mca
LIBRARIES    := /usr/include/sodium.h /usr/lib/x86_64-linux-gnu/libsodium.a \
                /usr/lib/aarch64-linux-gnu/libsodium.a /usr/lib/arm-linux-gnueabihf/libsodium.a
TOOLCHAINS   := $(VENV)/.toolchains

# Rechecked whenever this Makefile changes (a new tool or library in the lists above).
$(TOOLCHAINS): Makefile | $(STAMP)
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	for f in $(LIBRARIES); do test -e $$f || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing cross toolchains, qemu-user and libsodium (missing:$$missing)"; \
	    dpkg --add-architecture arm64 && dpkg --add-architecture armhf && \
	    { DEBIAN_FRONTEND=noninteractive apt-get update -qq || \
	      echo "warning: apt-get update failed for some lists; installing from the rest"; } && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null || exit 1; \
	  else \
	    echo "error: missing$$missing; run: sudo dpkg --add-architecture arm64 && sudo dpkg --add-architecture armhf && sudo apt-get update && sudo apt-get install -y $(APT_PACKAGES)"; exit 1; \
	  fi; \
	fi
	@touch $@

toolchains: $(TOOLCHAINS)

# --------------------------------------------------------------------------------------
# Bundles: build/<target>/<preset>-<N>lead/, one make target each, so re-running does
# nothing when nothing changed and `make -j2` builds two at a time.
comma := ,
MCU_TARGETS := cortex-m7 cortex-m4 cortex-m55
ALL_TARGETS := x86_64 x86_64-avx512 aarch64 armv7 cuda jetson-orin $(MCU_TARGETS)
TARGETS  ?= $(ALL_TARGETS)
BUNDLE_TARGETS := $(filter-out $(MCU_TARGETS),$(subst $(comma), ,$(TARGETS)))
BUILD    ?= build
SAMPLES  ?= 5000
BATCH    ?= 1
# The lead-wise model with every CinC lead set, and the 1-lead CPSC2019 model.
DEFAULT_VARIANTS_multi_scopic_leadwise := 12 6 4 3 2
DEFAULT_VARIANTS_multi_scopic          := 12 6 4 3 2
DEFAULT_VARIANTS_cpsc2019              := 1
DEFAULT_VARIANTS_cpsc2019_qrs          := 1
DEFAULT_VARIANTS_leadwise_classifier   := 12 6 4 3 2
DEFAULT_VARIANTS_seq_lab_crnn          := 1
DEFAULT_VARIANTS_leadwise_crnn         := 12 3
# The default matrix: the lead-wise backbone with every CinC lead set, the 1-lead
# backbone and the demo QRS detector (trained weights, mscnn/weights/); the lead-wise
# classifier and the two LSTM models (torch_ecg's default seq-lab CRNN, the lead-wise
# CRNN with the full and a 3-lead variant) build on request (PRESET=leadwise_classifier,
# PRESET=seq_lab_crnn,leadwise_crnn): they are not in the default build's time budget.
BUILD_PRESETS := $(or $(subst $(comma), ,$(PRESET)),multi_scopic_leadwise cpsc2019 cpsc2019_qrs)
variants_of    = $(or $(subst $(comma), ,$(VARIANTS)),$(DEFAULT_VARIANTS_$(1)))
# Reduced precision, for the detector by default: int8 bundles (compile/bundles/int8_window.py:
# quantized on real ECG, integer kernels, bit-exact to the int8 reference) for the CPU
# targets, and fp16 bundles (half-precision storage and products, fp32 accumulation) for
# aarch64. PRECISION=int8 (or fp16) builds only those, of every preset asked;
# PRECISION=fp32 only fp32 bundles.
PRECISION ?=
ifneq ($(filter-out fp32 int8 fp16,$(PRECISION)),)
  $(error PRECISION=$(PRECISION): choose fp32, int8 or fp16, or leave it unset for all)
endif
INT8_TARGETS := x86_64 x86_64-avx512 x86_64-avxvnni aarch64 armv7
FP16_TARGETS := aarch64
FP32_PRESETS := $(if $(filter int8 fp16,$(PRECISION)),,$(BUILD_PRESETS))
reduced_presets = $(if $(PRECISION),$(if $(filter $(1),$(PRECISION)),$(BUILD_PRESETS)),\
                    $(filter cpsc2019_qrs,$(BUILD_PRESETS)))
INT8_PRESETS := $(call reduced_presets,int8)
FP16_PRESETS := $(call reduced_presets,fp16)
targets_in    = $(filter $(1),$(BUNDLE_TARGETS))
reduced_bundles = $(foreach t,$(call targets_in,$(2)),$(foreach p,$(3),\
             $(foreach v,$(call variants_of,$(p)),$(BUILD)/$(t)/$(p)-$(v)lead-$(1)/manifest.json)))
BUNDLES := $(foreach t,$(BUNDLE_TARGETS),$(foreach p,$(FP32_PRESETS),\
             $(foreach v,$(call variants_of,$(p)),$(BUILD)/$(t)/$(p)-$(v)lead/manifest.json))) \
           $(call reduced_bundles,int8,$(INT8_TARGETS),$(INT8_PRESETS)) \
           $(call reduced_bundles,fp16,$(FP16_TARGETS),$(FP16_PRESETS))
SOURCES := $(wildcard mscnn/*.py mscnn/weights/* compile/*.py compile/*/*.py compile/*/*.c deploy/*.py \
             compile/tuning/*/*.json ../shared/data/*.npz)

# SIGNING_KEY=KEY (python -m deploy keygen KEY): every bundle's manifest is signed with this
# Ed25519 private key into manifest.sig (docs/reliability.md); a device given KEY.pub
# runs only bundles so signed.
SIGNING_KEY ?=
SIGN := $(if $(SIGNING_KEY),--sign $(SIGNING_KEY))

# Options every bundle depends on: rewritten only when they change.
$(BUILD)/.options: FORCE
	@mkdir -p $(BUILD)
	@echo "SAMPLES=$(SAMPLES) BATCH=$(BATCH) CHECKPOINT=$(CHECKPOINT) SIGNING_KEY=$(SIGNING_KEY)" > $@.new.$$$$ && \
	  { cmp -s $@.new.$$$$ $@ && rm $@.new.$$$$ || mv $@.new.$$$$ $@; }

define bundle_rule
$(BUILD)/$(1)/$(2)-$(3)lead/manifest.json: $(SOURCES) $(BUILD)/.options $(CHECKPOINT) | $(STAMP) $(TOOLCHAINS)
	$(PY) -m compile build --preset $(2) --targets $(1) --variants $(3) --samples $(SAMPLES) \
	  --batch $(BATCH) --out $(BUILD) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(SIGN) --quiet
endef
$(foreach t,$(BUNDLE_TARGETS),$(foreach p,$(FP32_PRESETS),\
  $(foreach v,$(call variants_of,$(p)),$(eval $(call bundle_rule,$(t),$(p),$(v))))))

define reduced_rule
$(BUILD)/$(1)/$(2)-$(3)lead-$(4)/manifest.json: $(SOURCES) $(BUILD)/.options $(CHECKPOINT) | $(STAMP) $(TOOLCHAINS)
	$(PY) -m compile build --precision $(4) --preset $(2) --targets $(1) --variants $(3) \
	  --samples $(SAMPLES) --batch $(BATCH) --out $(BUILD) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	  $(SIGN) --quiet
endef
$(foreach t,$(call targets_in,$(INT8_TARGETS)),$(foreach p,$(INT8_PRESETS),\
  $(foreach v,$(call variants_of,$(p)),$(eval $(call reduced_rule,$(t),$(p),$(v),int8)))))
$(foreach t,$(call targets_in,$(FP16_TARGETS)),$(foreach p,$(FP16_PRESETS),\
  $(foreach v,$(call variants_of,$(p)),$(eval $(call reduced_rule,$(t),$(p),$(v),fp16)))))

# The detector streamed (the README's stream and long-record commands need it): its
# stream bundles at STREAM_HOP samples per step for the CPU targets in TARGETS, fp32 and
# int8 (PRECISION= picks one); build/<target>/cpsc2019_qrs-1lead-stream<hop>[-int8]/.
STREAM_HOP ?= 512
STREAM_TARGETS := x86_64 x86_64-avx512 x86_64-avxvnni aarch64 armv7
STREAM_PRECISIONS := $(if $(PRECISION),$(filter fp32 int8,$(PRECISION)),fp32 int8)
stream_name = cpsc2019_qrs-1lead-stream$(STREAM_HOP)$(if $(filter int8,$(1)),-int8)
STREAMS := $(if $(filter cpsc2019_qrs,$(BUILD_PRESETS)),$(foreach t,$(call targets_in,$(STREAM_TARGETS)),\
             $(foreach p,$(STREAM_PRECISIONS),$(BUILD)/$(t)/$(call stream_name,$(p))/manifest.json)))

define stream_rule
$(BUILD)/$(1)/$(call stream_name,$(2))/manifest.json: $(SOURCES) $(BUILD)/.options $(CHECKPOINT) | $(STAMP) $(TOOLCHAINS)
	$(PY) -m compile build --preset cpsc2019_qrs --targets $(1) --hop $(STREAM_HOP) --precision $(2) \
	  --out $(BUILD) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(SIGN) --quiet
endef
$(foreach t,$(STREAM_TARGETS),$(foreach p,fp32 int8,$(eval $(call stream_rule,$(t),$(p)))))

# Cortex-M (the cores in TARGETS): the streaming detector, hop MCU_HOP, in fp32 and int8,
# each proven under qemu-system-arm (compile/mcu/firmware.py); build/mcu/<core>-stream<hop>-<precision>/.
MCU_HOP ?= 200
MCU_PRECISIONS := $(if $(PRECISION),$(filter fp32 int8,$(PRECISION)),fp32 int8)
MCU_BUILDS := $(if $(filter cpsc2019_qrs,$(BUILD_PRESETS)),\
  $(foreach c,$(filter $(MCU_TARGETS),$(subst $(comma), ,$(TARGETS))),$(foreach p,$(MCU_PRECISIONS),\
    $(BUILD)/mcu/$(c)-stream$(MCU_HOP)-$(p)/mcu.json)))
MCU_SOURCES := $(wildcard deploy/mcu/*)

define mcu_rule
$(BUILD)/mcu/$(1)-stream$(MCU_HOP)-$(2)/mcu.json: $(SOURCES) $(MCU_SOURCES) $(CHECKPOINT) | $(STAMP) $(TOOLCHAINS)
	$(PY) -m compile mcu --target $(1) --hop $(MCU_HOP) --samples 5000 --precision $(2) \
	  --folder $$(@D) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) --quiet
endef
$(foreach c,$(MCU_TARGETS),$(foreach p,fp32 int8,$(eval $(call mcu_rule,$(c),$(p)))))

build: $(BUNDLES) $(STREAMS) $(MCU_BUILDS)
	@$(PY) -m compile summary $(BUILD)

print-bundles:
	@echo $(BUNDLES) $(STREAMS) $(MCU_BUILDS)

# --------------------------------------------------------------------------------------
# The native runner (deploy/native), one relocatable folder per architecture.
NATIVE_ARCHES := x86_64 aarch64 armv7
RUNNERS := $(foreach a,$(NATIVE_ARCHES),$(BUILD)/native/$(a)/mscnn-run)
NATIVE_SOURCES := $(wildcard deploy/native/Makefile deploy/native/*.mk deploy/native/src/* \
                    deploy/native/runtime/*/* deploy/native/runtime/include/tvm/support/*)

$(BUILD)/native/%/mscnn-run: $(NATIVE_SOURCES) | $(STAMP) $(TOOLCHAINS)
	$(MAKE) -C deploy/native ARCH=$* OUT=$(abspath $(BUILD)/native/$*) PYTHON=$(abspath $(PY))

runners: $(RUNNERS)

# QEMU_CASES=N: under qemu, the first N golden cases of each bundle (a full-size LSTM
# model takes tens of seconds a case there); in-process checks run every case.
QEMU_CASES ?=
parity: $(RUNNERS)
	$(PY) -m deploy parity $(BUILD) --runners $(BUILD)/native $(if $(QEMU_CASES),--qemu-cases $(QEMU_CASES))

# make package TARGET=aarch64: the runner, the runtime and that target's bundles.
# make package TARGET=cortex-m7: the streaming detector (MCU_HOP samples per step) for a
# Cortex-M, proven under qemu-system-arm: library, headers, example firmware (compile/mcu/firmware.py).
# MCU_PRECISION=int8: the int8 step (fits a 1 MB flash, 256 KB RAM part such as nRF52840).
MCU_PRECISION ?= fp32
package: | $(STAMP) $(TOOLCHAINS)
	@test -n "$(TARGET)" || { echo "error: give TARGET=<target>, e.g. make package TARGET=aarch64"; exit 2; }
ifneq ($(filter $(TARGET),$(MCU_TARGETS)),)
	$(PY) -m compile mcu --target $(TARGET) --hop $(MCU_HOP) --samples 5000 \
	  --precision $(MCU_PRECISION) --folder $(BUILD)/mcu/$(TARGET)-stream$(MCU_HOP)-$(MCU_PRECISION) \
	  --package $(BUILD)/package $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(SIGN)
else
	$(MAKE) --no-print-directory $(filter $(BUILD)/$(TARGET)/%,$(BUNDLES) $(STREAMS)) runners
	$(PY) -m deploy package $(TARGET) --build $(BUILD) --runners $(BUILD)/native --out $(BUILD)/package \
	  $(SIGN)
endif

test: $(STAMP) $(TOOLCHAINS) $(TFLM_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(TFLM_VENV) $(ET_VENV) *.egg-info

# --------------------------------------------------------------------------------------
# Tuning: MetaSchedule over our conv schedule's tiles, for the presets `make build`
# builds; the records land in compile/tuning/<target>/ (commit them) and every later
# build of that target applies them. RPC_TRACKER/RPC_KEY measure on a device instead.
TUNE_PRESETS ?= $(BUILD_PRESETS)
tune: | $(STAMP) $(TOOLCHAINS)
	@test -n "$(TARGET)" || { echo "error: give TARGET=<target>, e.g. make tune TARGET=x86_64"; exit 2; }
	$(PY) -m compile tune --target $(TARGET) --presets $(subst $(eval) ,$(comma),$(strip $(TUNE_PRESETS))) \
	  --samples $(SAMPLES) --batch $(BATCH) $(if $(VARIANTS),--variants $(VARIANTS)) \
	  $(if $(RPC_TRACKER),--rpc-tracker $(RPC_TRACKER) --rpc-key $(RPC_KEY))

# --------------------------------------------------------------------------------------
# Latency side by side (PyTorch eager, ONNX Runtime, TVM) on this machine, batch 1 for
# every preset and lead variant, and batch 8 for two of them; and torch_ecg's default
# seq-lab CRNN (BiLSTM 256/256: ONNX Runtime runs its LSTM as one fused kernel, TVM as
# compile/lowering/lstm.py's projection matmul and recurrence). Table, JSON and PNG.
BENCH_TARGETS ?= x86_64,x86_64-avx512
STREAM_TARGET ?= $(lastword $(subst $(comma), ,$(BENCH_TARGETS)))
THREADS ?= $(shell nproc)
BENCH_BUILD := $(PY) -m compile build --targets $(BENCH_TARGETS) --samples $(SAMPLES) --quiet

bench: | $(STAMP) $(TOOLCHAINS) $(TFLM_STAMP) $(ET_STAMP)
	$(BENCH_BUILD) --preset multi_scopic_leadwise --out $(BUILD)/bench
	$(BENCH_BUILD) --preset cpsc2019 --out $(BUILD)/bench
	$(BENCH_BUILD) --preset multi_scopic --variants 12 --out $(BUILD)/bench
	$(BENCH_BUILD) --preset seq_lab_crnn --out $(BUILD)/bench
	$(BENCH_BUILD) --preset cpsc2019 --batch 8 --out $(BUILD)/bench-batch8
	$(BENCH_BUILD) --preset multi_scopic_leadwise --variants 12 --batch 8 --out $(BUILD)/bench-batch8
	$(PY) -m compile bench $(BUILD)/bench $(BUILD)/bench-batch8 --targets $(BENCH_TARGETS) \
	  --threads $(THREADS) --peers $(PEERS) --out $(BUILD)/bench
	$(BENCH_BUILD) --preset cpsc2019_qrs --out $(BUILD)/bench
	for hop in 64 128 512; do $(BENCH_BUILD) --preset cpsc2019_qrs --hop $$hop --out $(BUILD)/bench || exit 1; done
	$(PY) -m compile bench-stream $(BUILD)/bench/$(STREAM_TARGET)/cpsc2019_qrs-1lead \
	  $(foreach h,64 128 512,$(BUILD)/bench/$(STREAM_TARGET)/cpsc2019_qrs-1lead-stream$(h)) \
	  --threads $(THREADS) --peers $(PEERS) --out $(BUILD)/bench
	$(PY) -m compile.bench.int8 --threads $(THREADS) --peers $(PEERS) --out $(BUILD)/bench

# Hours of ECG (tiled real records) through the detector, each runner its own process:
# seconds per hour of ECG and peak memory for each length (compile/bench/long.py).
LONG_MINUTES ?= 60,360,1440
LONG_BUNDLE  := $(BUILD)/x86_64/cpsc2019_qrs-1lead
bench-long: $(LONG_BUNDLE)/manifest.json $(LONG_BUNDLE)-stream$(STREAM_HOP)/manifest.json \
            $(BUILD)/native/x86_64/mscnn-run
	$(PY) -m compile.bench.long --window $(LONG_BUNDLE) --stream $(LONG_BUNDLE)-stream$(STREAM_HOP) \
	  --runner $(BUILD)/native/x86_64/mscnn-run --minutes $(LONG_MINUTES) --out $(BUILD)/bench-long

# --------------------------------------------------------------------------------------
# The demo QRS detector (preset cpsc2019_qrs) on the CPSC2019 sample in ../shared/data
# (or MSCNN_DATA). `make train` retrains it, deterministic on CPU (a few minutes), into
# $(BUILD)/train and says whether it reproduces the committed checkpoint's sha256;
# `make evaluate` cross-validates the recipe (5 folds, 5 trainings) and writes JSON.
.PHONY: train evaluate
# MODEL=cnn|crnn|crnn-uni picks the detector (mscnn.train --model); where its recipe is
# committed, the recipe drives the training and its sha256 is checked.
# EVAL_MODELS: the models `make evaluate` compares on the same folds.
MODEL ?= cnn
EVAL_MODELS ?= cnn,crnn
TRAIN_NAME_cnn := cpsc2019_qrs
TRAIN_NAME_crnn := cpsc2019_qrs_bilstm
TRAIN_NAME_crnn-uni := cpsc2019_qrs_lstm
TRAIN_RECIPE = mscnn/weights/$(TRAIN_NAME_$(MODEL)).json
train: | $(STAMP)
	$(PY) -m mscnn.train --out $(BUILD)/train/$(or $(TRAIN_NAME_$(MODEL)),$(MODEL)).pt \
	  $(if $(and $(TRAIN_NAME_$(MODEL)),$(wildcard $(TRAIN_RECIPE))),--recipe $(TRAIN_RECIPE),--model $(MODEL))

evaluate: | $(STAMP)
	$(PY) -m compile.bench.evaluate --models $(EVAL_MODELS) --out $(BUILD)/evaluate

# --------------------------------------------------------------------------------------
# Mutation testing (not in CI): mutmut changes the code whose mistakes are silent (parity
# tolerances, lead sets and variants, bundle hashing, MAC counting) one small change at a
# time, in a copy under build/mutation, and runs the fast tests that reach it; then a few
# planted table bugs. Prints the score and every surviving mutant with its diff.
MUTATION_BUDGET ?= 720
.PHONY: mutation
$(VENV)/.mutation: pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[mutation]'
	@touch $@

mutation: $(VENV)/.mutation
	$(PY) tests/mutation/mutate.py --budget $(MUTATION_BUDGET)
