# start `achilles-interp reproduce "$@"` detached on the device (runs into /tmp/runs, report in /tmp/runs);
# GRID_LOG=/tmp/grid-NAME.log starts a second grid beside the first (e.g. other tasks with their own --jobs)
. .ci/device/setup.sh
nvidia-smi -L; nproc
mkdir -p /tmp/runs
setsid nohup python3 -m achilles_interp.cli reproduce --runs-dir /tmp/runs --out /tmp/runs/report.md \
  --device cuda "$@" > "${GRID_LOG:-/tmp/grid.log}" 2>&1 < /dev/null &
echo "started reproduce, pid $!"
