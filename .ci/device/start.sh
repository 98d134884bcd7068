# start `achilles-interp reproduce "$@"` detached on the device (runs into /tmp/runs, report in /tmp/runs)
. .ci/device/setup.sh
nvidia-smi -L; nproc
mkdir -p /tmp/runs
setsid nohup python3 -m achilles_interp.cli reproduce --runs-dir /tmp/runs --out /tmp/runs/report.md \
  --device cuda "$@" > /tmp/grid.log 2>&1 < /dev/null &
echo "started reproduce, pid $!"
