# print the grid's progress and pack results into $OUT every 60 s, for $1 seconds (pack.py: metrics.tgz and
# the weights of finished runs an earlier call did not return); `monitor.sh SECONDS --states` also packs the
# states of unfinished runs at the end, for the last call of a session
. .ci/device/setup.sh
end=$(( $(date +%s) + $1 ))
while :; do
  python3 - <<'PY'
import glob, json, os, time
rows, done = [], 0
for f in sorted(glob.glob('/tmp/runs/*/*/seed*/metrics.json')):
    d = json.load(open(f)); h = d['history'][-1] if d['history'] else None
    if d['complete'] and not os.path.exists(f[:-12] + 'model.safetensors'):
        done += 1; continue  # finished in an earlier session: counted, not listed
    acc = ' '.join(f"{k}={v:.2f}" for k, v in (h or {}).get('accuracy', {}).items())
    rows.append(f"{'DONE' if d['complete'] else 'run '} ep{h['epoch'] if h else 0:>3} {f[10:-13]}: {acc}")
print(time.strftime('%X'), len(rows), 'runs listed,', done, 'finished earlier'); print('\n'.join(rows))
PY
  for f in /tmp/grid*.log; do tail -2 "$f"; done; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  if [ $(date +%s) -ge $end ]; then python3 .ci/device/pack.py --commit ${2:-}; break; fi
  python3 .ci/device/pack.py
  sleep 60
done
