#!/usr/bin/env bash
# Download the Dask engine's wheels for the device (CPython 3.12, manylinux x86_64) into .whl/.
#   .device/fetch_dask_wheels.sh          the packages the device image lacks (dask, distributed,
#                                         tornado and 4 small pure-Python dependencies)
#   .device/fetch_dask_wheels.sh --plain  also every requirement a plain `pip install torch` image lacks
#   .device/fetch_dask_wheels.sh --nnsight  nnsight and what the image lacks for it into .whl_nnsight/
#                                         (3.7 MB; a separate folder because it does not fit in the same
#                                         call as both kernel bundles; setup.sh installs it when carried)
# Then name .whl in the device call's carry and start its command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
if [ "${1:-}" = "--nnsight" ]; then
  grep -qx '/.whl_nnsight/' .git/info/exclude 2>/dev/null || echo /.whl_nnsight/ >> .git/info/exclude
  dest=.whl_nnsight
  # the image has cloudpickle, transformers, huggingface-hub and httpx; it lacks these (KINDS.md)
  pkgs=(nnsight==0.8.1 greenlet==3.5.6 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5)
else
  dest=.whl
  # missing from the device image (its package list has click, cloudpickle, fsspec, jinja2, msgpack,
  # packaging, psutil, pyyaml, sortedcontainers, toolz; tornado is not there: KINDS.md, 2026-11-30)
  pkgs=(dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1)
fi
if [ "${1:-}" = "--plain" ]; then
  # a plain PyTorch install brings jinja2, markupsafe, fsspec (and filelock, networkx, sympy, ...) only
  pkgs+=(click==8.5.1 cloudpickle==3.1.3 packaging==26.4 toolz==1.2.0 sortedcontainers==2.4.0
         pyyaml==6.0.4 msgpack==1.2.4 psutil==7.2.2)
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "${pkgs[@]}"
ls -l "$dest"/*.whl | awk '{printf "%9d  %s\n", $5, $NF; t += $5} END {printf "%9d  total (%.2f MB)\n", t, t / 1e6}'
