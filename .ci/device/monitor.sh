# print the grid's progress and pack results into $OUT every 60 s, for $1 seconds: metrics.tgz (every
# run's metrics.json, config.json, train.log) and models_N.tar (the weights of runs finished since the
# last pack; one file per pack, each under the 16 MiB a returned file may have)
. .ci/device/setup.sh
end=$(( $(date +%s) + $1 ))
pack() {
  cd /tmp/runs || return
  find . -name metrics.json -o -name train.log -o -name config.json | tar czf $OUT/metrics.tgz -T - 2>/dev/null
  touch /tmp/packed.txt
  find . -name model.safetensors | sed 's|/model.safetensors||' | grep -vxF -f /tmp/packed.txt > /tmp/new.txt
  if [ -s /tmp/new.txt ]; then
    n=$(ls $OUT/models_*.tar 2>/dev/null | wc -l)
    sed 's|$|/model.safetensors|' /tmp/new.txt | tar cf $OUT/models_$n.tar -T -
    cat /tmp/new.txt >> /tmp/packed.txt
  fi
  cd - >/dev/null
}
while :; do
  python3 - <<'PY'
import glob, json, time
rows = []
for f in sorted(glob.glob('/tmp/runs/*/*/seed*/metrics.json')):
    d = json.load(open(f)); h = d['history'][-1] if d['history'] else None
    acc = ' '.join(f"{k}={v:.2f}" for k, v in (h or {}).get('accuracy', {}).items())
    rows.append(f"{'DONE' if d['complete'] else 'run '} ep{h['epoch'] if h else 0:>3} {f[10:-13]}: {acc}")
print(time.strftime('%X'), len(rows), 'runs'); print('\n'.join(rows))
PY
  for f in /tmp/grid*.log; do tail -2 "$f"; done; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  pack
  [ $(date +%s) -ge $end ] && break
  sleep 60
done
