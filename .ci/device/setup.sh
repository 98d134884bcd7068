# source me on the device: unpack the kernels, install the carried wheels, set PYTHONPATH (idempotent)
if [ ! -d /tmp/site/mamba_ssm ]; then
  for f in .cuda/*.txz; do xz -dc "$f" | tar x -C /tmp; done
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .cuda/device-wheels/*.whl
  [ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD:$PYTHONPATH TRITON_CACHE_AUTOTUNING=1 PYTHONUNBUFFERED=1
