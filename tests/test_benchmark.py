"""benchmark.py runs and prints a table row per configuration."""
import subprocess
import sys

from conftest import ROOT
import meta_learning


def test_the_algorithms_benchmark_times_every_algorithm():
    result = subprocess.run([sys.executable, "benchmark.py", "algorithms", "--configs", "5w1s", "--repeats", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1] == "| Omniglot (paper settings) | " + " | ".join(
        f"{name} s/iter" for name in meta_learning.ALGORITHMS) + " |"
    seconds = [float(cell) for cell in lines[3].strip("| ").split(" | ")[1:]]
    assert len(seconds) == len(meta_learning.ALGORITHMS) and all(s > 0 for s in seconds)
