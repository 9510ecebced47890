"""compare.py on hand-made run folders."""
import json
import subprocess
import sys

from conftest import ROOT


def fake_sinusoid_run(folder, algorithm, offset):
    folder.mkdir()
    curve = {"mean": [3.0 - 0.1 * s + offset for s in range(11)], "ci95": [0.1] * 11}
    (folder / "config.json").write_text(json.dumps({"algorithm": algorithm}))
    (folder / "results.json").write_text(json.dumps({
        "mse": {algorithm: {"5": curve}, "pretrained": {"5": curve}}, "train_seconds": 120.0}))


def compare(*args):
    return subprocess.run([sys.executable, "compare.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_runs_of_one_algorithm_stay_apart_and_the_figure_is_written(tmp_path):
    fake_sinusoid_run(tmp_path / "maml-a", "maml", 0.0)
    fake_sinusoid_run(tmp_path / "maml-b", "maml", 1.0)
    result = compare(tmp_path / "maml-a", tmp_path / "maml-b", "--figure", tmp_path / "cmp.png")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| maml")]
    assert rows == ["| maml (maml-a) | 5 | 3.000 ± 0.100 | 2.900 ± 0.100 | 2.500 ± 0.100 | 2.000 ± 0.100 | 2.0 min |",
                    "| maml (maml-b) | 5 | 4.000 ± 0.100 | 3.900 ± 0.100 | 3.500 ± 0.100 | 3.000 ± 0.100 | 2.0 min |"]
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_a_folder_without_results_is_refused_with_exit_code_2(tmp_path):
    result = compare(tmp_path)
    assert result.returncode == 2 and "is not a finished run" in result.stderr
