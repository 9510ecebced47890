#!/bin/bash
# Threads chosen right after a job that kept both cores busy for 90 s, old rule (1-minute load
# average) against new (cores busy now), one after the other on the same machine, each from a
# clean clone: the README's first look as written.
out=/work/main/results/measure2
busy() { for i in 1 2; do timeout 90 python -c "while 1: pass" & done; wait; }
step() {  # name, folder
  echo "== $1: $(uptime)" >> $out/times.txt
  /usr/bin/time -f "$1 %e s" -a -o $out/times.txt bash -c "cd $2 && python omniglot_maml.py --meta-iterations 1000" \
      > $out/$1.log 2>&1
}
rm -rf /work/tl-old /work/tl-new
git clone -q /work/main /work/tl-old && git -C /work/tl-old checkout -q c0591c7   # load-average rule
git clone -q /work/main /work/tl-new                                                # busy-cores rule
for d in /work/tl-old /work/tl-new; do mkdir -p $d/data/omniglot && cp /work/shared/omniglot/*.zip $d/data/omniglot/; done
lscpu | grep "Model name" >> $out/times.txt
busy; step old-rule /work/tl-old
busy; step new-rule /work/tl-new
echo "== end: $(uptime)" >> $out/times.txt
