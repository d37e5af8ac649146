#!/usr/bin/env bash
# The BackboneAdapter / FaceRecognizer tests on timm's and torchvision's ResNet-18, in a venv of
# their own: torchvision from PyPI only imports beside the torch build it was made for
# (torch 2.14.1 + torchvision 0.29.1), not beside the CPU torch 2.13.0 of the main CI venv.
# Usage: bash .ci/foreign_backbones.sh WORKDIR
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:?usage: foreign_backbones.sh WORKDIR}
python3 -m venv "$workdir/venv"
"$workdir/venv/bin/pip" install --quiet "torch==2.14.1" "torchvision==0.29.1" timm
"$workdir/venv/bin/pip" install --quiet ".[dev]"
cd "$workdir"  # test the installed package, not the checkout
"$workdir/venv/bin/python" -c "import timm, torchvision; print('timm', timm.__version__, '| torchvision', torchvision.__version__)"
FACEAUX_REQUIRE_FOREIGN=1 "$workdir/venv/bin/python" -m pytest "$OLDPWD/tests/models/test_foreign_backbones.py" \
  -p no:cacheprovider --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" -q -rs
rm -rf "$workdir/venv"
