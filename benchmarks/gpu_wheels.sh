#!/usr/bin/env bash
# The wheels benchmarks/gpu.sh needs on the device machine, whose image holds PyTorch and most of the
# scientific stack but not TransformerLens (nor what it imports), and an older transformers than
# pyproject allows: those packages at the lock's versions (constraints.txt), for its Python (3.12)
# on x86-64 Linux, into .whl/ (git ignores it; carried to the device). The README's GPU section has
# the device command that installs them. The list is what the benchmarks import that the image lacks
# (found by running them and reading sys.modules against the image's package list).
#
#   bash benchmarks/gpu_wheels.sh               # PY_VERSION=3.12 DEST=.whl
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="transformers transformer-lens huggingface-hub tokenizers datasets dill multiprocess
googleapis-common-protos httpcore2 httpx2 sniffio truststore"
pins=()
for package in $PACKAGES; do
    pin=$(grep -i "^$package==" constraints.txt) || { echo "$package is not in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
mkdir -p "${DEST:-.whl}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "${DEST:-.whl}" "${pins[@]}"
du -sh "${DEST:-.whl}"
