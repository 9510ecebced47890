"""Omniglot data (synthetic archives in the release's layout, a local download
server) and omniglot_maml.py end to end, on the real data when it is here."""
import csv
import hashlib
import http.server
import json
import os
import threading
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import meta_learning
import omniglot_data
import omniglot_maml
from conftest import load_file, metrics_rows

# A small layout for synthetic archives: (alphabets, characters per alphabet) per set.
SMALL = {"images_background": (4, 3), "images_evaluation": (2, 3)}


def character_png(seed):
    """A 105x105 1-bit image, black strokes on white, as in the release."""
    rng = np.random.default_rng(seed)
    image = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        draw.line([tuple(rng.integers(10, 95, 2).tolist()) for _ in range(3)], fill=0, width=4)
    return image


def write_archive(path, set_name, alphabets, characters, drop=None):
    first_id = 1 if set_name == "images_background" else 1 + SMALL["images_background"][0] * SMALL["images_background"][1]
    with zipfile.ZipFile(path, "w") as archive:
        for a in range(alphabets):
            for c in range(characters):
                char_id = first_id + a * characters + c
                for drawer in range(1, omniglot_data.DRAWERS + 1):
                    name = f"{set_name}/Alphabet_{a}/character{c + 1:02d}/{char_id:04d}_{drawer:02d}.png"
                    if name == drop:
                        continue
                    with archive.open(name, "w") as f:
                        character_png(char_id * 100 + drawer).save(f, format="PNG")


@pytest.fixture
def small_layout(monkeypatch):
    monkeypatch.setattr(omniglot_data, "EXPECTED_LAYOUT", {s: (a, a * c) for s, (a, c) in SMALL.items()})
    monkeypatch.setattr(omniglot_data, "BACKGROUND_VALIDATION_ALPHABETS", 1)


@pytest.fixture
def synthetic_dir(tmp_path, small_layout):
    for set_name, (alphabets, characters) in SMALL.items():
        write_archive(tmp_path / f"{set_name}.zip", set_name, alphabets, characters)
    return tmp_path


def test_synthetic_archives_are_checked_preprocessed_and_cached(synthetic_dir, monkeypatch):
    images, names = omniglot_data.load_omniglot(str(synthetic_dir))
    assert images.shape == (18, 20, 28, 28) and images.dtype == np.uint8
    assert names[0].tolist() == ["images_background", "Alphabet_0", "character01"]
    assert names[-1].tolist() == ["images_evaluation", "Alphabet_1", "character03"]
    expected = 255 - np.asarray(character_png(100 + 1).convert("L").resize((28, 28), Image.LANCZOS))
    np.testing.assert_array_equal(images[0, 0], expected)  # strokes = 255, background = 0
    assert images[0, 0].mean() < 80

    cache = synthetic_dir / omniglot_data.CACHE_NAME
    assert cache.exists()

    def no_preprocessing(_):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(omniglot_data, "_preprocess", no_preprocessing)
    cached_images, cached_names = omniglot_data.load_omniglot(str(synthetic_dir))
    np.testing.assert_array_equal(cached_images, images)
    np.testing.assert_array_equal(cached_names, names)
    monkeypatch.undo()


def test_unwritable_cache_only_warns(synthetic_dir, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(omniglot_data.np, "savez", read_only)
    images, _ = omniglot_data.load_omniglot(str(synthetic_dir))
    assert images.shape == (18, 20, 28, 28)
    assert "cannot write the cache" in capsys.readouterr().err
    assert not (synthetic_dir / omniglot_data.CACHE_NAME).exists()


@pytest.mark.parametrize("damage", ["stale", "truncated", "garbage", "float64", "zeros"])
def test_stale_or_damaged_cache_is_rebuilt(synthetic_dir, damage):
    images, _ = omniglot_data.load_omniglot(str(synthetic_dir))
    cache = synthetic_dir / omniglot_data.CACHE_NAME
    if damage == "stale":  # an archive replaced after the cache was built
        archive = synthetic_dir / "images_evaluation.zip"
        os.utime(archive, (1, 1))
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:1000])
    elif damage in ("float64", "zeros"):  # the right stamp and shapes, other contents
        with np.load(cache) as saved:
            arrays = dict(saved)
        arrays["images"] = arrays["images"].astype(np.float64) if damage == "float64" else 0 * arrays["images"]
        with open(cache, "wb") as f:
            np.savez(f, **arrays)
    else:
        cache.write_bytes(b"not an npz file")
    before = cache.stat().st_mtime_ns, cache.stat().st_size
    rebuilt, _ = omniglot_data.load_omniglot(str(synthetic_dir))
    np.testing.assert_array_equal(rebuilt, images)
    assert (cache.stat().st_mtime_ns, cache.stat().st_size) != before


@pytest.mark.parametrize("problem, message", [
    ("missing_drawer", "does not have drawers 01-20"),
    ("missing_alphabet", "does not have the Omniglot layout"),
    ("not_a_zip", "is not a readable zip archive"),
])
def test_wrong_layout_or_damaged_archive_is_a_one_line_error(tmp_path, small_layout, problem, message):
    write_archive(tmp_path / "images_evaluation.zip", "images_evaluation", 2, 3)
    background = tmp_path / "images_background.zip"
    if problem == "missing_drawer":
        write_archive(background, "images_background", 4, 3,
                      drop="images_background/Alphabet_1/character02/0005_07.png")
    elif problem == "missing_alphabet":
        write_archive(background, "images_background", 3, 3)
    else:
        background.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(omniglot_data.DataError, match=message) as error:
        omniglot_data.load_omniglot(str(tmp_path))
    assert "\n" not in str(error.value)


def marker_images(n_characters):
    """Images whose pixel (0, 0) holds character * 20 + drawer + 1 (/255 after loading)."""
    images = np.zeros((n_characters, 20, 28, 28), dtype=np.float32)
    images[:, :, 0, 0] = np.arange(n_characters * 20).reshape(n_characters, 20) + 1
    return images


def decode(image):
    """(character, drawer, corner index) of a marker image, the corner showing the rotation."""
    corners = [image[0, 0, 0], image[0, -1, 0], image[0, -1, -1], image[0, 0, -1]]
    corner = next(i for i, v in enumerate(corners) if v > 0)
    code = round(corners[corner].item() * 255) - 1
    return code // 20, code % 20, corner


@pytest.mark.parametrize("rotations", [False, True])
def test_task_sampler_gives_disjoint_drawers_consistent_labels_and_rotated_classes(rotations):
    sampler = omniglot_data.TaskSampler(marker_images(10), rotations=rotations, device="cpu")
    assert sampler.n_classes == (40 if rotations else 10)
    generator = torch.Generator().manual_seed(0)
    (sx, sy), (qx, qy) = sampler.sample(64, 5, 3, 2, generator)
    assert sx.shape == (64, 15, 1, 28, 28) and sy.shape == (64, 15)
    assert qx.shape == (64, 10, 1, 28, 28) and qy.shape == (64, 10)
    corners_seen = set()
    for task in range(64):
        classes = {}
        for x, label, part in [(x, y, "s") for x, y in zip(sx[task], sy[task])] + \
                              [(x, y, "q") for x, y in zip(qx[task], qy[task])]:
            character, drawer, corner = decode(x)
            classes.setdefault(label.item(), []).append((character, corner, drawer, part))
            corners_seen.add(corner)
        assert sorted(classes) == list(range(5))
        identities = set()
        for members in classes.values():
            assert len({(c, r) for c, r, _, _ in members}) == 1  # one character, one rotation per class
            identities.add(members[0][:2])
            support = {d for _, _, d, part in members if part == "s"}
            query = {d for _, _, d, part in members if part == "q"}
            assert len(support) == 3 and len(query) == 2 and not support & query
        assert len(identities) == 5  # five different classes
    assert corners_seen == ({0, 1, 2, 3} if rotations else {0})
    # Two identical generators give identical tasks (what resuming relies on).
    again = sampler.sample(64, 5, 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(again[0][0], sx) and torch.equal(again[1][1], qy)


def test_a_share_of_the_tasks_is_a_slice_of_the_whole_draw():
    """What each of several processes builds (distributed.py) is its slice of the
    meta-batch that one process would build, and the generator ends in the same state."""
    sampler = omniglot_data.TaskSampler(marker_images(10), rotations=True, device="cpu")
    whole_generator, part_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = sampler.sample(7, 5, 2, 1, whole_generator)
    part = sampler.sample(7, 5, 2, 1, part_generator, slice(4, 7))
    for whole_tensor, part_tensor in zip([*whole[0], *whole[1]], [*part[0], *part[1]]):
        assert torch.equal(part_tensor, whole_tensor[4:7])
    assert torch.equal(whole_generator.get_state(), part_generator.get_state())


def test_splits_are_disjoint_and_have_the_documented_sizes():
    names = np.array([("images_background" if i < 964 else "images_evaluation", f"A{i // 40}", f"c{i}")
                      for i in range(1623)])
    train, validation, test = omniglot_data.split_characters(names, "paper")
    assert (len(train), len(validation), len(test)) == (1100, 100, 423)
    assert sorted(train + validation + test) == list(range(1623))
    assert omniglot_data.split_characters(names, "paper") == (train, validation, test)
    train, validation, test = omniglot_data.split_characters(names, "background")
    assert sorted(train + validation) == list(range(964)) and test == list(range(964, 1623))
    assert len({names[i][1] for i in validation}) == omniglot_data.BACKGROUND_VALIDATION_ALPHABETS
    assert not {names[i][1] for i in validation} & {names[i][1] for i in train}  # whole alphabets


# ---- download --------------------------------------------------------------
@pytest.fixture
def release_server(tmp_path, small_layout, monkeypatch):
    """A local HTTP server with the synthetic archives under /good/, the same
    with a different body under /tampered/, and a cut-short body under /truncated/."""
    files = {}
    for set_name, (alphabets, characters) in SMALL.items():
        path = tmp_path / "release" / f"{set_name}.zip"
        path.parent.mkdir(exist_ok=True)
        write_archive(path, set_name, alphabets, characters)
        files[path.name] = path.read_bytes()
    monkeypatch.setattr(omniglot_data, "RELEASE_MD5", {n: hashlib.md5(b).hexdigest() for n, b in files.items()})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            _, kind, name = self.path.split("/")
            body = files[name]
            if kind == "tampered":
                body = body[:-1] + bytes([body[-1] ^ 1])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if kind == "truncated" else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield lambda kind: monkeypatch.setattr(
        omniglot_data, "DOWNLOAD_URL", f"http://127.0.0.1:{server.server_port}/{kind}/{{name}}")
    server.shutdown()
    server.server_close()


def test_download_fetches_checks_and_places_the_archives(tmp_path, release_server):
    release_server("good")
    data_dir = tmp_path / "data"
    images, _ = omniglot_data.load_omniglot(str(data_dir))
    assert images.shape == (18, 20, 28, 28)
    assert sorted(os.listdir(data_dir)) == sorted([*omniglot_data.RELEASE_MD5, omniglot_data.CACHE_NAME])


@pytest.mark.parametrize("kind, message", [("tampered", "wrong MD5"), ("truncated", "cut short")])
def test_bad_download_is_never_used(tmp_path, release_server, kind, message):
    release_server(kind)
    data_dir = tmp_path / "data"
    with pytest.raises(omniglot_data.DataError, match=message):
        omniglot_data.load_omniglot(str(data_dir))
    assert not data_dir.exists()  # no partial file, and not the folder made for the download


def test_offline_error_says_where_to_put_the_archives(tmp_path, monkeypatch):
    with socket_bound_and_closed() as port:
        monkeypatch.setattr(omniglot_data, "DOWNLOAD_URL", f"http://127.0.0.1:{port}/{{name}}")
    with pytest.raises(omniglot_data.DataError) as error:
        omniglot_data.load_omniglot(str(tmp_path / "data"))
    message = str(error.value)
    assert "cannot download" in message and str(tmp_path / "data") in message and "\n" not in message
    assert "images_background.zip and images_evaluation.zip" in message


class socket_bound_and_closed:
    """A localhost port that nothing listens on."""

    def __enter__(self):
        import socket
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()


# ---- the script ------------------------------------------------------------
QUICK = ["--meta-iterations", "4", "--validate-every", "2", "--validation-tasks", "8", "--test-tasks", "8",
         "--device", "cpu"]


def test_script_trains_and_evaluates_on_synthetic_data(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    results = omniglot_maml.main([*QUICK, "--n-way", "2", "--data-dir", str(synthetic_dir), "--out-dir", str(out)])
    test = results["test"]
    assert len(test["accuracy"]["mean"]) == 11 and len(test["accuracy"]["ci95"]) == 11
    assert test["headline_step"] == 3 and test["tasks"] == 8 and test["split"] == "background"
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "best.pt", "results.json",
                 "training_curves.png", "test_accuracy.png"):
        assert os.path.getsize(out / name) > 0
    again = omniglot_maml.main(["--out-dir", str(out), "--eval-only", "--data-dir", str(synthetic_dir)])
    assert again["test"]["accuracy"] == test["accuracy"]

    # Another test protocol, without retraining: its results go beside the run's, never over them.
    run_files = {name: (out / name).read_bytes() for name in ("config.json", "metrics.csv", "results.json")}
    rotated = omniglot_maml.main(["--out-dir", str(out), "--eval-only", "--data-dir", str(synthetic_dir),
                                  "--rotate-test-classes", "--test-tasks", "10", "--test-steps", "4"])
    assert {name: (out / name).read_bytes() for name in run_files} == run_files
    saved = json.loads((out / "results-rotate_test_classes=True-test_tasks=10-test_steps=4.json").read_text())
    assert saved["test"]["rotate_test_classes"] is True and saved["test"]["tasks"] == 10
    assert saved["test"]["headline_step"] == 4 and saved["test"]["accuracy"] == rotated["test"]["accuracy"]
    assert rotated["test"]["accuracy"] != test["accuracy"]
    assert os.path.getsize(out / "test_accuracy-rotate_test_classes=True-test_tasks=10-test_steps=4.png") > 0


# Settings an algorithm needs on the synthetic data (36 training classes, 20 drawers).
SYNTHETIC_SETTINGS = {"reptile": ["--reptile-train-shots", "4"], "protonet": ["--train-way", "6", "--train-queries", "2"]}


@pytest.mark.parametrize("algorithm", meta_learning.ALGORITHMS)
def test_every_algorithm_gives_the_same_outputs_and_adapts_at_test_as_it_trains(synthetic_dir, tmp_path, monkeypatch,
                                                                                capsys, algorithm):
    evaluate, head_only = meta_learning.evaluate, []

    def recorded(*args, **kwargs):
        head_only.append(kwargs.get("adapted") == meta_learning.inner_loop_mask(len(args[3]), head_only=True))
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(meta_learning, "evaluate", recorded)
    out = tmp_path / algorithm
    results = omniglot_maml.main([*QUICK, "--n-way", "2", "--algorithm", algorithm, *SYNTHETIC_SETTINGS.get(algorithm, []),
                                  "--data-dir", str(synthetic_dir), "--out-dir", str(out)])
    assert set(head_only) == {algorithm == "anil"}  # ANIL adapts only the final layer, at test too
    steps = meta_learning.ALGORITHMS[algorithm].steps
    assert len(results["test"]["accuracy"]["mean"]) == (11 if algorithm != "reptile" else 51) if steps else 1
    assert results["test"]["headline_step"] == (0 if not steps else 1 if algorithm == "metasgd" else
                                                50 if algorithm == "reptile" else 3)
    assert set(results["test"]) == {"accuracy", "headline_step", "tasks", "split", "rotate_test_classes",
                                    "best_iteration", "best_validation_accuracy", "meta_iterations", "train_seconds"}
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "best.pt", "results.json",
                 "training_curves.png", "test_accuracy.png"):
        assert os.path.getsize(out / name) > 0
    rows = metrics_rows(out / "metrics.csv")
    assert list(rows[0]) == ["iteration", "train_loss", "train_accuracy", "validation_accuracy", "test_accuracy",
                             "test_ci95"]
    assert all(0 <= float(row["train_accuracy"]) <= 1 for row in rows)
    if not steps:  # tested again with gradient steps: refused as training refuses them, nothing written
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            omniglot_maml.main(["--eval-only", "--test-steps", "3", "--data-dir", str(synthetic_dir),
                                "--out-dir", str(out)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"error: --test-steps does not apply to {algorithm}, which predicts in " \
                                          f"one pass from the support set, without gradient steps\n"
        assert not list(out.glob("results-*"))


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "metasgd", "protonet", "protonet+running", "cnp"])
def test_killed_and_resumed_run_equals_uninterrupted_run(synthetic_dir, tmp_path, monkeypatch, algorithm):
    """protonet+running: its batch-norm statistics, averaged in meta-training, resumed with the parameters."""
    algorithm, *running = algorithm.split("+")
    args = [*QUICK, "--meta-iterations", "6", "--n-way", "2", "--algorithm", algorithm, *SYNTHETIC_SETTINGS.get(algorithm, []),
            "--meta-lr-halving", "3", "--data-dir", str(synthetic_dir), *(["--batch-norm", "running"] if running else [])]
    straight = omniglot_maml.main([*args, "--out-dir", str(tmp_path / "straight")])

    sample = omniglot_data.TaskSampler.sample
    calls = {"n": 0}

    def sample_then_die(self, *a, **kw):  # dies in iteration 5, after the checkpoint at 4
        if self.n_classes == 36:  # the meta-training sampler
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return sample(self, *a, **kw)

    monkeypatch.setattr(omniglot_data.TaskSampler, "sample", sample_then_die)
    with pytest.raises(KeyboardInterrupt):
        omniglot_maml.main([*args, "--out-dir", str(tmp_path / "killed")])
    monkeypatch.setattr(omniglot_data.TaskSampler, "sample", sample)
    resumed = omniglot_maml.main(["--resume", "--out-dir", str(tmp_path / "killed"), "--data-dir", str(synthetic_dir)])

    for name in ("checkpoint.pt", "best.pt"):
        a = load_file(str(tmp_path / "straight" / name))["params"]
        b = load_file(str(tmp_path / "killed" / name))["params"]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert metrics_rows(tmp_path / "straight" / "metrics.csv") == metrics_rows(tmp_path / "killed" / "metrics.csv")
    assert resumed["test"]["accuracy"] == straight["test"]["accuracy"]


def test_train_minutes_stops_training_and_still_tests(synthetic_dir, tmp_path, capsys):
    results = omniglot_maml.main([*QUICK, "--meta-iterations", "1000", "--train-minutes", "0.0001",
                                  "--n-way", "2", "--data-dir", str(synthetic_dir), "--out-dir", str(tmp_path)])
    assert results["test"]["meta_iterations"] == 1 and results["test"]["best_iteration"] == 1
    assert "--train-minutes 0.0001: stopped after iteration 1" in capsys.readouterr().out


def test_test_every_records_test_accuracy_against_iterations_and_seconds(synthetic_dir, tmp_path):
    results = omniglot_maml.main([*QUICK, "--validate-every", "4", "--test-every", "2", "--n-way", "2",
                                  "--data-dir", str(synthetic_dir), "--out-dir", str(tmp_path)])
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    tested = [r for r in rows if r["test_accuracy"]]
    assert [int(r["iteration"]) for r in tested] == [2, 4]
    # one validation (at 4), so the final test is of the parameters tested at 4
    accuracy, step = results["test"]["accuracy"], results["test"]["headline_step"]
    assert float(tested[-1]["test_accuracy"]) == pytest.approx(accuracy["mean"][step], abs=1e-12)
    assert float(tested[-1]["test_ci95"]) == pytest.approx(accuracy["ci95"][step], abs=1e-12)
    seconds = [float(r["train_seconds"]) for r in rows]
    assert seconds == sorted(seconds) and 0 < seconds[-1] <= results["test"]["train_seconds"] + 0.1


def test_a_finished_run_continues_with_more_iterations_or_minutes(synthetic_dir, tmp_path, capsys):
    args = [*QUICK, "--n-way", "2", "--data-dir", str(synthetic_dir)]
    omniglot_maml.main([*args, "--meta-iterations", "6", "--out-dir", str(tmp_path / "straight")])
    omniglot_maml.main([*args, "--out-dir", str(tmp_path / "longer")])
    capsys.readouterr()
    longer = omniglot_maml.main(["--resume", "--meta-iterations", "6", "--out-dir", str(tmp_path / "longer"),
                                 "--data-dir", str(synthetic_dir)])
    assert longer["test"]["meta_iterations"] == 6
    out = capsys.readouterr().out
    assert "resumed from iteration 4" in out
    assert "test accuracy (%) after each number of adaptation steps, mean ± 95% CI over 8 tasks:" in out
    mean, ci = longer["test"]["accuracy"]["mean"][3], longer["test"]["accuracy"]["ci95"][3]
    assert f"    3 steps: {100 * mean:6.2f} ± {100 * ci:.2f}  (the headline)" in out
    for a, b in zip(load_file(tmp_path / "straight" / "checkpoint.pt")["params"],
                    load_file(tmp_path / "longer" / "checkpoint.pt")["params"]):
        assert torch.equal(a, b)

    omniglot_maml.main([*args, "--train-minutes", "0.0001", "--out-dir", str(tmp_path / "budget")])
    more_time = omniglot_maml.main(["--resume", "--train-minutes", "0", "--out-dir", str(tmp_path / "budget"),
                                    "--data-dir", str(synthetic_dir)])
    assert more_time["test"]["meta_iterations"] == 4

    reptile = [*args, "--algorithm", "reptile", "--reptile-train-shots", "4", "--out-dir", str(tmp_path / "reptile")]
    omniglot_maml.main(reptile)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # its meta step is annealed over the iterations it started with
        omniglot_maml.main([*reptile, "--resume", "--meta-iterations", "6"])
    assert "--meta-iterations 6 differs from the resumed run's 4" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--n-way", "4"], "--n-way 4 exceeds the 3 classes of the background split's validation set"),
    (["--k-shot", "11"], "needs 22 drawers"),
    (["--split", "omniglot"], "--split must be one of"),
    (["--model", "resnet"], "--model must be one of"),
    (["--algorithm", "sgd"], "--algorithm must be one of"),
    (["--inner-lr", "-1"], "--inner-lr must be positive"),
    (["--meta-batch-size", "0"], "--meta-batch-size must be at least 1"),
    (["--n-way", "five"], "invalid int value"),
    (["--train-minutes", "-1"], "--train-minutes must be 0 (no limit) or positive"),
    (["--eval-only"], "no checkpoint at"),
    (["--algorithm", "protonet", "--inner-lr", "0.1"], "--inner-lr does not apply to protonet, which predicts in one"),
    (["--algorithm", "cnp", "--test-steps", "3"], "--test-steps does not apply to cnp"),
    (["--train-way", "3"], "--train-way 3 differs from --n-way 5: maml's network has one output per class"),
    (["--algorithm", "protonet", "--n-way", "2", "--train-way", "40"],
     "--train-way 40 exceeds the 36 classes of the background split's train set"),
    (["--algorithm", "protonet", "--n-way", "2", "--k-shot", "5", "--train-queries", "16"], "needs 21 drawers"),
    (["--algorithm", "protonet", "--train-way", "0"], "--train-way must be at least 2, got 0"),
    (["--algorithm", "protonet", "--train-queries", "0"], "--train-queries must be at least 1, got 0"),
    (["--algorithm", "maml", "--batch-norm", "running"], "--batch-norm running applies to protonet, not maml"),
    (["--batch-norm", "none"], "--batch-norm must be one of transductive, running"),
])
def test_bad_input_is_one_line_and_exit_code_2(synthetic_dir, tmp_path, capsys, args, message):
    # Background split of the synthetic data: 1 validation alphabet of 3 characters.
    with pytest.raises(SystemExit) as exit_info:
        omniglot_maml.main([*args, "--data-dir", str(synthetic_dir), "--out-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("flag", ["--train-way", "--train-queries"])
def test_zero_training_classes_or_queries_are_refused_before_any_download(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        omniglot_maml.main(["--algorithm", "protonet", flag, "0", "--data-dir", str(tmp_path / "data"),
                            "--out-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and "must be at least" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["layout", "zip"])
def test_bad_data_folder_stops_the_script_with_one_line(tmp_path, small_layout, capsys, damage):
    write_archive(tmp_path / "images_evaluation.zip", "images_evaluation", 2, 3)
    if damage == "layout":
        write_archive(tmp_path / "images_background.zip", "images_background", 2, 3)
    else:
        (tmp_path / "images_background.zip").write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as exit_info:
        omniglot_maml.main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---- the real data, when this checkout sits beside shared/omniglot (real_data_dir: conftest)
def test_real_data_has_the_release_layout(real_data_dir):
    images, names = omniglot_data.load_omniglot(str(real_data_dir))
    assert images.shape == (1623, 20, 28, 28)
    assert len({tuple(n[:2]) for n in names}) == 50
    assert 0.04 < images.mean() / 255 < 0.2  # thin strokes on an empty background


@pytest.mark.parametrize("model", ["cnn", "official-cnn", "maxpool", "mlp"])  # the variants: test_every_network_...
@pytest.mark.parametrize("split", omniglot_data.SPLITS)
def test_real_data_smoke_run(real_data_dir, tmp_path, model, split):
    results = omniglot_maml.main([*QUICK, "--model", model, "--split", split, "--data-dir", str(real_data_dir),
                                  "--out-dir", str(tmp_path / "run")])
    assert 0 <= results["test"]["accuracy"]["mean"][3] <= 1


@pytest.mark.parametrize("model", omniglot_maml.MODELS)
def test_every_network_classifies_and_its_inner_loop_adapts_what_it_says(model):
    params, forward, features, mask = omniglot_maml.build_network(model, 5, torch.Generator().manual_seed(0),
                                                                  torch.device("cpu"))
    net = omniglot_maml.MODELS[model]
    images, labels = torch.rand(10, 1, 28, 28), torch.arange(5).repeat(2)
    assert forward(params, images).shape == (10, 5)
    assert features(params[:-2], images).shape == (10, params[-2].shape[1])  # what the output layer reads
    adapted = meta_learning.adapt(forward, F.cross_entropy, params, images, labels, 1, 0.4, adapted=mask)[-1]
    mask = mask or (True,) * len(params)
    assert len(mask) == len(params)
    assert mask.count(False) == (0 if net is None or net.inner_loop_batch_norm else 4 * (1 + net.batch_norm_scale))
    assert all(torch.equal(a, p) for a, p, m in zip(adapted, params, mask) if not m)  # left as they are
    assert all(not torch.equal(a, p) for a, p in zip(adapted, params) if a.dim() > 1)  # every weight adapts
