#!/bin/bash
# Idle measurements, one after another: the previous suite (a7087c9) from a clean clone, then
# the README's quick start as written, from a clean clone of HEAD.
out=/work/main/results/measure
step() {  # name, command...
  local name=$1; shift
  echo "== $name: $(uptime)" >> $out/times.txt
  /usr/bin/time -f "$name %e s" -a -o $out/times.txt bash -c "$*" > $out/$name.log 2>&1
}
rm -rf /work/qs-old /work/qs-new
git clone -q /work/main /work/qs-old && git -C /work/qs-old checkout -q a7087c9
git clone -q /work/main /work/qs-new
lscpu | grep "Model name" >> $out/times.txt
step old-suite "cd /work/qs-old && CI=true python -m pytest -q tests"
cd /work/qs-new
mkdir -p data/omniglot && cp /work/shared/omniglot/*.zip data/omniglot/  # what the first look's download would fetch
step install "cd /work/qs-new && python -m pip install -q -r requirements.txt"
step first-look "cd /work/qs-new && python omniglot_maml.py --meta-iterations 1000"
step sinusoid "cd /work/qs-new && python sinusoid_maml.py"
step new-suite "cd /work/qs-new && CI=true python -m pytest -q tests"
echo "== end: $(uptime)" >> $out/times.txt
