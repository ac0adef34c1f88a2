# make test     create .venv, install torch + requirements (+ espeak-ng), run the whole test suite
#               (and, on an AVX-512 CPU, its numeric tests once more with PyTorch's kernels limited to AVX2)
# make demo     build the demo corpus and run norm_para -> training -> testing -> predict on it
# make demo-retrieval   the retrieval follow-up on it: preference labels -> ranker -> chunk ranks -> seq2seq model
# TORCH_SPEC picks another torch build, e.g. make test TORCH_SPEC="torch==2.5.1"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q

.PHONY: venv test espeak demo demo-retrieval pretrained clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# espeak-ng synthesises the demo corpus and the arousal check; installed when missing (as root)
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null); \
	  else echo "espeak-ng is missing: sudo apt-get install espeak-ng"; fi; }

# On a CPU with AVX-512 the numeric tests run once more on the code paths an AVX2-only CPU runs: PyTorch's own
# kernels (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA) and MKL's (MKL_ENABLE_INSTRUCTIONS) limited to AVX2,
# which round differently, so a tolerance that holds on one CPU family only is caught here. NumPy and SciPy (the
# tests' float64 references) are not limited. SER_AVX2_RERUN=1 has tests/test_harness.py check that the limits took.
AVX2_ENV = SER_AVX2_RERUN=1 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
test: venv espeak
	$(PY) -m pytest $(PYTEST_ARGS) tests
	@if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then \
	  echo "AVX-512 CPU: the numeric tests again, PyTorch's kernels limited to AVX2 ($(AVX2_ENV))"; \
	  $(AVX2_ENV) $(PY) -m pytest $(PYTEST_ARGS) -m numeric tests; fi

# the demo: corpus (built once in $(DEMO_DIR)), z-norm terms, one model per attribute, test scores, predictions
DEMO_ITER ?= 150
DEMO_ATTEN ?= RnnAttenVec
DEMO_DIR ?= demo_data
export DEMO_DIR
DEMO_RUN = -iter $(DEMO_ITER) -batch 32 -atten $(DEMO_ATTEN)
demo: venv espeak
	$(PY) norm_para.py --demo
	for emo in Act Val Dom; do $(PY) training.py --demo $(DEMO_RUN) -emo $$emo --seed 0 || exit 1; done
	for emo in Act Val Dom; do $(PY) testing.py --demo $(DEMO_RUN) -emo $$emo --out $(DEMO_DIR)/test_$$emo.csv | grep -- -CCC || exit 1; done
	$(PY) predict.py --demo $(DEMO_RUN) --out $(DEMO_DIR)/predictions.csv --plot $(DEMO_DIR)/plots > /dev/null
	@echo "demo done: predictions $(DEMO_DIR)/predictions.csv, plots $(DEMO_DIR)/plots/, loss curves $(DEMO_DIR)/Models/*.png"

# the retrieval follow-up on the demo corpus, at small sizes (the reference's: ranker -ep 20 with 100000 pairs an
# epoch, seq2seq -ep 30 -batch 128); ends with the seq2seq model's Test CCC and the emotion curve of a Test
# utterance whose emotion sits in one sentence
DEMO_EMO ?= Act
DEMO_RANKER_EP ?= 2
DEMO_PAIRS ?= 1000
DEMO_SEQ_EP ?= 20
DEMO_RBATCH ?= 32
DR = $(DEMO_DIR)/retrieval
DEMO_RANKER = $(DEMO_DIR)/Models/LSTM_epoch$(DEMO_RANKER_EP)_batch$(DEMO_RBATCH)_$(DEMO_EMO)_ranker.pth.tar
DEMO_SEQ2SEQ = $(DEMO_DIR)/Models/LSTM_epoch$(DEMO_SEQ_EP)_batch$(DEMO_RBATCH)_EmoRankerSeq_$(DEMO_EMO).pth.tar
demo-retrieval: venv espeak
	$(PY) norm_para.py --demo
	$(PY) preference_labels.py -emo $(DEMO_EMO) --detailed $(DEMO_DIR)/labels_detailed.json \
	  --label-csv $(DEMO_DIR)/labels_concensus.csv --out-dir $(DR)/prefs
	$(PY) training.py --demo --task ranker -ep $(DEMO_RANKER_EP) -batch $(DEMO_RBATCH) -emo $(DEMO_EMO) \
	  --prefs-dir $(DR)/prefs --pairs-per-epoch $(DEMO_PAIRS) --seed 0
	$(PY) retrieval.py --demo -set Train -emo $(DEMO_EMO) --checkpoint $(DEMO_RANKER) --out $(DR)/EmoChunkRankSeq/training_$(DEMO_EMO).json
	$(PY) training.py --demo --task chunk -ep $(DEMO_SEQ_EP) -batch $(DEMO_RBATCH) -emo $(DEMO_EMO) \
	  --ranks-dir $(DR)/EmoChunkRankSeq --detailed $(DEMO_DIR)/labels_detailed.json --seed 0
	$(PY) testing.py --demo --checkpoint $(DEMO_SEQ2SEQ) | grep -- -CCC
	@f=$$($(PY) -c "import pandas as p; t = p.read_csv('$(DEMO_DIR)/labels_concensus.csv'); t = t[t.Split_Set == 'Test']; \
	  o = t[t.EmoStart.notna()]; r = (o if len(o) else t).iloc[0]; print(r.FileName, r.EmoStart, r.EmoEnd)"); set -- $$f; \
	  $(PY) predict.py --demo $(DEMO_DIR)/Audios/$$1 --checkpoint $(DEMO_SEQ2SEQ) --chunks-out $(DR)/chunks.csv \
	    --plot $(DR)/plots > /dev/null && \
	  echo "demo-retrieval done: the emotion curve of $$1 (its emotional sentence: $$2 to $$3 s) in $(DR)/plots/, its chunks in $(DR)/chunks.csv"

# the released models: make pretrained [DEST=.] [PRETRAINED_FROM=DIR] [KERAS_FROM=DIR] [RETRIEVAL_FROM=DIR]
# (a local folder installs only its set, offline; with none, every set is downloaded; the Keras .h5 files are
# converted into our checkpoints in DEST/trained_model_keras_v1.6/)
DEST ?= .
pretrained: venv
	$(PY) pretrained.py --dest $(DEST) $(if $(PRETRAINED_FROM),--from $(PRETRAINED_FROM)) \
	  $(if $(KERAS_FROM),--keras-from $(KERAS_FROM)) $(if $(RETRIEVAL_FROM),--retrieval-from $(RETRIEVAL_FROM))

clean:
	rm -rf $(VENV) .pytest_cache
