#!/bin/bash
# The quick start's sinusoid run and the suite while training runs keep both cores busy.
out=/work/main/results/measure
step() {
  local name=$1; shift
  echo "== $name: $(uptime)" >> $out/busy-times.txt
  /usr/bin/time -f "$name %e s" -a -o $out/busy-times.txt bash -c "$*" > $out/busy-$name.log 2>&1
  echo "== $name done: $(uptime)" >> $out/busy-times.txt
}
rm -rf /work/qs-busy; git clone -q /work/main /work/qs-busy
lscpu | grep "Model name" >> $out/busy-times.txt
step sinusoid "cd /work/qs-busy && python sinusoid_maml.py"
step suite "cd /work/qs-busy && CI=true python -m pytest -q tests"
