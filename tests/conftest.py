import csv
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import omniglot_data  # noqa: E402

# One thread in every part of every test: in this process, in the scripts it starts
# and in their processes. A run's floating-point result can depend on its thread
# count (it does on Intel Xeon CPUs with AVX-512), and tests compare runs bit for bit.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# Where the real archives may be: where the README tells users to put them, and
# the shared copy beside the checkout (CI's).
REAL_DATA_DIRS = [os.path.join(ROOT, "data", "omniglot"), os.path.join(ROOT, "..", "shared", "omniglot")]


def load_file(path):
    """A checkpoint or best.pt as saved, whatever experiment wrote it."""
    return torch.load(path, map_location="cpu", weights_only=False)


def metrics_rows(path):
    """metrics.csv as lists of rows without its train_seconds column (wall-clock differs between runs)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{key: value for key, value in row.items() if key != "train_seconds"} for row in rows]


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory):
    """The release archives linked into a temporary folder, where their cache is built once per session."""
    found = [d for d in REAL_DATA_DIRS if all(os.path.exists(os.path.join(d, n)) for n in omniglot_data.RELEASE_MD5)]
    if not found:
        pytest.skip("no Omniglot archives in data/omniglot or ../shared/omniglot")
    data_dir = tmp_path_factory.mktemp("omniglot")  # the cache goes here, never beside the archives
    for name in omniglot_data.RELEASE_MD5:
        os.symlink(os.path.realpath(os.path.join(found[0], name)), data_dir / name)
    return data_dir


def pytest_terminal_summary(terminalreporter):
    """Say which tests were skipped for want of the real data, and how to include them."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if "no Omniglot archives" in str(report.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests on the real Omniglot data were skipped: no archives in data/omniglot or "
            f"../shared/omniglot. To include them, put images_background.zip and images_evaluation.zip in "
            f"data/omniglot (python omniglot_maml.py downloads them there) and run the tests again.")
