#!/usr/bin/env bash
# Install detectron2's Python package into the environment of the interpreter given as $1.
#
# detectron2 publishes no wheels. The only PyPI distribution of its sources, pb1-detectron2==0.6,
# is an sdist without the C++/CUDA files, so `pip install pb1-detectron2` fails while compiling
# them. Its pure-Python package does work on CPU and GPU (NMS and ROIAlign come from
# torchvision) once spnas.engines.detectron2.compat has put a placeholder for the missing
# `detectron2._C` in place, so this script installs exactly that package, under the
# distribution name `detectron2` (version 0.6+pyonly) so that `pip show/uninstall detectron2`
# work and a later install of upstream detectron2 replaces it cleanly.
#
# If `import detectron2` already works with a detectron2 this script did not install (an upstream
# build with its compiled ops), nothing is changed: that detectron2 has its own limits on iopath,
# omegaconf and cloudpickle, which our pins could break. After a previous run of this script
# (version 0.6+pyonly), only the pins of requirements-detectron2.txt are checked.
#
# Usage: tools/install_detectron2.sh PYTHON    (PYTHON: the interpreter of the target venv,
#        which must already have torch and the packages of requirements.txt)
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 PYTHON" >&2
    exit 2
fi
PY=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SDIST_NAME=pb1-detectron2
SDIST_VERSION=0.6
SDIST_FILE=$SDIST_NAME-$SDIST_VERSION.tar.gz
# The sdist is unsigned and, as explained below, may have to be fetched without pip, so its
# content is pinned.
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
# `pb1-detectron2` and `detectron2` name the same sources; the local label says what is absent.
DIST_VERSION=0.6+pyonly

if ! "$PY" -c "import torch, setuptools" >/dev/null 2>&1; then
    echo "install_detectron2: $PY cannot import torch and setuptools; install requirements.txt first" >&2
    exit 1
fi
start=$SECONDS

if where=$("$PY" -c "import detectron2, os; print(detectron2.__version__, 'at', os.path.dirname(detectron2.__file__))" 2>/dev/null); then
    installed=$("$PY" -c "from importlib.metadata import version; print(version('detectron2'))" 2>/dev/null || true)
    if [[ "$installed" != "$DIST_VERSION" ]]; then
        echo "install_detectron2: detectron2 $where is already importable; nothing changed"
        exit 0
    fi
    # Ours: a changed requirements-detectron2.txt takes effect (with every pin satisfied this
    # installs nothing and prints nothing).
    "$PY" -m pip install --quiet -r "$ROOT/requirements-detectron2.txt"
    echo "install_detectron2: detectron2 $where is already importable; nothing to install"
    exit 0
fi
"$PY" -m pip install --quiet -r "$ROOT/requirements-detectron2.txt"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/spnas-detectron2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "install_detectron2: downloading the $SDIST_NAME==$SDIST_VERSION sdist"
# pip reads the sdist's metadata by running its setup.py, which imports torch: hence no build
# isolation. Recent pip (26.3, pinned in requirements-build.txt; 23.2 did not) then rejects the
# sdist, --no-deps notwithstanding, because its `all` extra names a GitHub URL (panopticapi).
# The file is then fetched from the index's project page (PEP 503) directly. Either way its
# sha256 is checked against the pin.
if ! "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    --dest "$tmp" "$SDIST_NAME==$SDIST_VERSION" >"$tmp/pip-download.log" 2>&1; then
    if ! grep -q "cannot declare direct URL dependencies" "$tmp/pip-download.log"; then
        cat "$tmp/pip-download.log" >&2
        echo "install_detectron2: pip could not download $SDIST_NAME==$SDIST_VERSION" >&2
        exit 1
    fi
    echo "install_detectron2: pip refuses the sdist's metadata (a direct URL in an extra);" \
        "fetching $SDIST_FILE from the package index instead"
    "$PY" - "${PIP_INDEX_URL:-https://pypi.org/simple}" "$SDIST_NAME" "$SDIST_FILE" "$tmp" <<'EOF'
import html
import re
import sys
import urllib.parse
import urllib.request

index, project, filename, dest = sys.argv[1:]
page_url = f"{index.rstrip('/')}/{project}/"
with urllib.request.urlopen(page_url, timeout=180) as response:
    page = response.read().decode("utf-8")
# PEP 503: the project page lists one anchor per file.
for href in re.findall(r'href="([^"]+)"', page):
    url = urllib.parse.urljoin(page_url, html.unescape(href)).split("#", 1)[0]
    if url.rsplit("/", 1)[-1] == filename:
        break
else:
    sys.exit(f"{page_url} lists no file named {filename}")
urllib.request.urlretrieve(url, f"{dest}/{filename}")
EOF
fi
if [[ ! -f "$tmp/$SDIST_FILE" ]]; then
    echo "install_detectron2: expected $tmp/$SDIST_FILE after the download; found: $(ls "$tmp")" >&2
    exit 1
fi
actual=$("$PY" -c "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())" "$tmp/$SDIST_FILE")
if [[ "$actual" != "$SDIST_SHA256" ]]; then
    echo "install_detectron2: $SDIST_FILE has sha256 $actual, expected $SDIST_SHA256" >&2
    exit 1
fi

# Package only `detectron2/` (with the model zoo's configs, which are data files) from a minimal
# setup.py: the sdist's own setup.py insists on compiling detectron2._C from sources it lacks.
tar -xzf "$tmp/$SDIST_FILE" -C "$tmp"
src="$tmp/$SDIST_NAME-$SDIST_VERSION"
pkg="$tmp/pkg"
mkdir "$pkg"
cp -R "$src/detectron2" "$src/LICENSE" "$pkg/"
cat >"$pkg/setup.py" <<EOF
import os

from setuptools import find_packages, setup

# Walked rather than globbed with "**", which needs setuptools >= 62.3.
configs = [
    os.path.relpath(os.path.join(d, f), "detectron2/model_zoo")
    for d, _, files in os.walk("detectron2/model_zoo/configs")
    for f in files
    if f.endswith((".yaml", ".py"))
]
setup(
    name="detectron2",
    version="$DIST_VERSION",
    description="detectron2 $SDIST_VERSION Python sources from the $SDIST_NAME sdist, without "
    "compiled ops (installed by spnas tools/install_detectron2.sh)",
    url="https://github.com/facebookresearch/detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": configs},
    python_requires=">=3.6",
    zip_safe=False,
)
EOF

echo "install_detectron2: installing detectron2 $DIST_VERSION (Python sources only) into $("$PY" -c 'import sys; print(sys.prefix)')"
"$PY" -m pip install --quiet --no-deps --no-build-isolation "$pkg"

# `import detectron2` needs neither the compiled ops nor the compat placeholder; importing its
# layers does, which is spnas's job (tests/engines/test_detectron2_compat.py covers it).
"$PY" -c "import detectron2" >/dev/null
echo "install_detectron2: done in $((SECONDS - start)) s; detectron2.layers needs" \
    "spnas.engines.detectron2.compat.apply() (run by 'import spnas') for its missing compiled ops"
