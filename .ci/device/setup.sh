# source me on the device: unpack the kernels, install the carried wheels, set PYTHONPATH (idempotent)
if [ ! -d /tmp/site/mamba_ssm ]; then
  for f in .cuda/*.txz; do xz -dc "$f" | tar x -C /tmp; done
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .cuda/device-wheels/*.whl
fi
if [ -d .whl ] && [ ! -d /tmp/site/distributed ]; then  # Dask, for the grid; may come in a later call than the kernels
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
fi
if [ -d .whl_nnsight ] && [ ! -d /tmp/site/nnsight ]; then  # optional: fetch_dask_wheels.sh --nnsight
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl_nnsight/*.whl
fi
# probes/ and analyses/ are achilles_interp.probes / .analyses only through pyproject's package-dir
# mapping (an install); on a plain PYTHONPATH checkout, links give the same package names
for d in probes analyses; do [ -e achilles_interp/$d ] || ln -s ../$d achilles_interp/$d; done
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 PYTHONUNBUFFERED=1
