"""Omniglot (Lake et al. 2015): download, layout checks, preprocessing, cache,
splits and vectorised N-way K-shot task sampling.

The data folder holds the release's two archives, images_background.zip
(30 alphabets, 964 characters) and images_evaluation.zip (20 alphabets, 659
characters), 20 drawers per character, 105x105 1-bit PNGs laid out as
<set>/<Alphabet>/characterNN/XXXX_YY.png. Missing archives are downloaded
(MD5-checked). Archives already there, or the folders they unzip into
(images_background/, images_evaluation/), are accepted when their layout is
right, so re-packed copies with other checksums work too.

Images are resized to 28x28 with LANCZOS and inverted so that strokes are 1,
as the paper's code does, and cached beside the archives in one .npz file that
records what it was built from; a stale or damaged cache is rebuilt.
"""
import hashlib
import http.client
import io
import os
import re
import sys
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np
import torch
from PIL import Image

import files


DOWNLOAD_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
RELEASE_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
# (alphabets, characters) of each set; every character has DRAWERS images.
EXPECTED_LAYOUT = {"images_background": (30, 964), "images_evaluation": (20, 659)}
DRAWERS = 20
IMAGE_SIZE = 28
# Pillow ignores the resampling filter for 1-bit images (it uses nearest), so
# the images are converted to 8-bit grey first and LANCZOS really applies.
PREPROCESSING = f"grey, LANCZOS resize to {IMAGE_SIZE}x{IMAGE_SIZE}, strokes = 1 (v1)"
CACHE_NAME = f"omniglot{IMAGE_SIZE}.npz"
# The paper's split: 1623 characters in sorted order, shuffled with this seed.
PAPER_SPLIT = dict(train=1100, validation=100, test=423, seed=0)
# The background split holds out whole background alphabets for validation.
BACKGROUND_VALIDATION_ALPHABETS = 5
SPLITS = ("background", "paper")
_IMAGE_PATH = re.compile(r"^(images_background|images_evaluation)/([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png$")


class DataError(Exception):
    """Something wrong with the data folder; the message is one line for the user."""


# ---- archives: download and layout ------------------------------------------
def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name, data_dir):
    """Fetch one archive into a temporary file, check its MD5, then rename it
    into place: a partial or corrupt download never becomes the archive."""
    url = DOWNLOAD_URL.format(name=name)
    target = os.path.join(data_dir, name)
    partial = target + ".part"
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as f:
            expected_size = response.headers.get("Content-Length")
            while block := response.read(1 << 20):
                f.write(block)
        if expected_size is not None and os.path.getsize(partial) != int(expected_size):
            raise DataError(f"download of {name} was cut short ({os.path.getsize(partial)} of {expected_size} bytes)")
        if _md5(partial) != RELEASE_MD5[name]:
            raise DataError(f"download of {name} has the wrong MD5 checksum; not used")
        os.replace(partial, target)
    except http.client.IncompleteRead as error:
        raise DataError(f"download of {name} was cut short ({len(error.partial)} bytes in the last block); "
                        f"not used") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise DataError(f"cannot download {name} ({getattr(error, 'reason', error)}): put "
                        f"{' and '.join(RELEASE_MD5)} from github.com/brendenlake/omniglot (python/), or the "
                        f"folders they unzip into, into {os.path.abspath(data_dir)}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


class _ExtractedArchive:
    """An archive unzipped into the data folder (<data_dir>/<set>/...), read as the zip file is."""

    def __init__(self, data_dir, set_name):
        self.data_dir, self.set_name = data_dir, set_name

    def namelist(self):
        root = os.path.join(self.data_dir, self.set_name)
        return sorted(os.path.relpath(os.path.join(folder, name), self.data_dir).replace(os.sep, "/")
                      for folder, _, names in os.walk(root) for name in names)

    def read(self, member):
        with open(os.path.join(self.data_dir, member), "rb") as f:
            return f.read()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _archive_images(path, set_name):
    """{(alphabet, character): [(drawer, zip member name)]}, checked against the
    release's layout; path is the archive, or the folder it was extracted into."""
    try:
        archive = _ExtractedArchive(os.path.dirname(path), set_name) if os.path.isdir(path) \
            else zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path} is not a readable zip archive ({error})") from None
    characters = {}
    for name in names:
        match = _IMAGE_PATH.match(name)
        if match and match.group(1) == set_name:
            characters.setdefault((match.group(2), match.group(3)), []).append((int(match.group(5)), name))
    n_alphabets, n_characters = EXPECTED_LAYOUT[set_name]
    top_folders = sorted({name.split("/")[0] for name in names if "/" in name})
    if not characters and top_folders and set_name not in top_folders:
        raise DataError(f"{path} holds {top_folders[0]}/, not {set_name}/: the full release archive "
                        f"{set_name}.zip is needed (not a small subset such as {set_name}_small1.zip)")
    found_alphabets = len({alphabet for alphabet, _ in characters})
    if (found_alphabets, len(characters)) != (n_alphabets, n_characters):
        raise DataError(f"{path} does not have the Omniglot layout: expected {n_alphabets} alphabets and "
                        f"{n_characters} characters under {set_name}/, found {found_alphabets} and {len(characters)}")
    incomplete = [c for c, images in characters.items() if sorted(d for d, _ in images) != list(range(1, DRAWERS + 1))]
    if incomplete:
        raise DataError(f"{path}: character {'/'.join(incomplete[0])} does not have drawers 01-{DRAWERS}")
    return archive, characters


def _preprocess(png_bytes):
    image = Image.open(io.BytesIO(png_bytes)).convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return 255 - np.asarray(image, dtype=np.uint8)  # strokes (black in the PNG) become 255


def _read_image(archive, path, member):
    """One preprocessed image; a damaged member (bad CRC, a corrupt deflate stream,
    unsupported compression, encryption, not a PNG) is a DataError naming the
    archive and the member."""
    try:
        return _preprocess(archive.read(member))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
            RuntimeError) as error:
        raise DataError(f"{path}: cannot read {member} ({str(error).splitlines()[0]})") from None


def _archive_stamp(path):
    """What the cache records of an archive (or extracted folder) it was built from: its size
    and time; a folder's file count and a digest of each file's name, size and time, so that
    any file replaced, whatever its time, makes the cache stale."""
    if os.path.isdir(path):
        digest, count = hashlib.sha256(), 0
        for folder, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                member = os.path.join(folder, name)
                try:
                    stat = os.stat(member)
                except OSError as error:  # a dangling link, a file that went away
                    raise DataError(f"{path}: cannot read {os.path.relpath(member, path)} "
                                    f"({error.strerror})") from None
                digest.update(f"{os.path.relpath(member, path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
                count += 1
        return f"{os.path.basename(path)}/:{count}:{digest.hexdigest()[:16]}"
    stat = os.stat(path)
    return f"{os.path.basename(path)}:{stat.st_size}:{int(stat.st_mtime)}"


def _archives(data_dir):
    """{archive name: its zip file in data_dir, else the folder it was extracted into
    there, else the zip file downloaded}. A download that fails leaves no folder behind."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"the data folder {data_dir} is a file")
    archives, created = {}, []
    try:
        for name in RELEASE_MD5:
            archives[name] = path = os.path.join(data_dir, name)
            if os.path.exists(path):
                continue
            if os.path.isdir(path[:-len(".zip")]):
                archives[name] = path[:-len(".zip")]
                continue
            try:
                created = created or files.make_folders(data_dir)
            except OSError as error:
                raise DataError(f"cannot create the data folder {data_dir} ({error.strerror})") from None
            download(name, data_dir)
    except DataError:
        files.remove_empty_folders(created)
        raise
    return archives


def load_omniglot(data_dir):
    """All 1623 characters as uint8 images (characters, drawers, 28, 28), strokes
    = 255, and their names (set, alphabet, character) in sorted order."""
    archives = _archives(data_dir)
    source = ";".join(_archive_stamp(path) for path in archives.values())
    cache_path = os.path.join(data_dir, CACHE_NAME)
    cached = _read_cache(cache_path, source)
    if cached is not None:
        return cached
    print(f"preprocessing the Omniglot images into {cache_path} (once; about 10-25 s)", flush=True)
    names, images = [], []
    for name, path in archives.items():
        set_name = name[:-len(".zip")]
        archive, characters = _archive_images(path, set_name)
        with archive:
            for alphabet, character in sorted(characters):
                images.append(np.stack([_read_image(archive, path, member)
                                        for _, member in sorted(characters[(alphabet, character)])]))
                names.append((set_name, alphabet, character))
    images, names = np.stack(images), np.array(names)
    error = files.write_file(cache_path, lambda f: np.savez(
        f, images=images, names=names, source=source, preprocessing=PREPROCESSING,
        checksum=_checksum(images, names)), mode="wb", optional=True)
    if error:  # a read-only data folder still works, only slower to start
        print(f"warning: cannot write the cache {cache_path} ({error.strerror or error}); continuing without it",
              file=sys.stderr)
    return images, names


def _checksum(images, names):
    """SHA-256 of the cached arrays' contents, types and shapes."""
    digest = hashlib.sha256()
    for array in (images, names):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _read_cache(path, source):
    """The cached arrays, or None when there is no cache or it is stale or damaged
    (its contents no longer match the checksum written with them)."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as cache:
            if str(cache["source"]) != source or str(cache["preprocessing"]) != PREPROCESSING:
                return None
            images, names, checksum = cache["images"], cache["names"], str(cache["checksum"])
    except Exception:  # any unreadable cache is simply rebuilt
        return None
    if images.dtype != np.uint8 or checksum != _checksum(images, names):
        return None
    n_characters = sum(c for _, c in EXPECTED_LAYOUT.values())
    if images.shape != (n_characters, DRAWERS, IMAGE_SIZE, IMAGE_SIZE) or names.shape != (n_characters, 3):
        return None
    return images, names


# ---- splits ----------------------------------------------------------------------
def split_characters(names, split):
    """Character indices of the train, validation and test sets of a split."""
    n = len(names)
    if split == "paper":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(PAPER_SPLIT["seed"])).tolist()
        train, validation = PAPER_SPLIT["train"], PAPER_SPLIT["validation"]
        return order[:train], order[train:train + validation], order[train + validation:]
    background = [i for i in range(n) if names[i][0] == "images_background"]
    alphabets = sorted({names[i][1] for i in background})
    shuffled = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(0)).tolist()
    held_out = {alphabets[i] for i in shuffled[:BACKGROUND_VALIDATION_ALPHABETS]}
    return ([i for i in background if names[i][1] not in held_out],
            [i for i in background if names[i][1] in held_out],
            [i for i in range(n) if names[i][0] == "images_evaluation"])


# ---- tasks -----------------------------------------------------------------------
def task_samplers(images, names, split, rotate_test_classes, device):
    """Task samplers of the split's meta-training characters (rotations as new classes, as
    the paper's), validation and test characters (rotated too when rotate_test_classes)."""
    train, validation, test = split_characters(names, split)
    return {"train": TaskSampler(images[train], rotations=True, device=device),
            "validation": TaskSampler(images[validation], rotate_test_classes, device),
            "test": TaskSampler(images[test], rotate_test_classes, device)}


class TaskSampler:
    """N-way tasks from a set of characters held as one float tensor on the device.

    With rotations, each character gives four classes (0/90/180/270 degrees).
    Support and query images of a class come from disjoint drawers. Labels are
    the class's position in the task, 0..N-1.
    """

    def __init__(self, images, rotations, device):
        self.images = torch.as_tensor(images, dtype=torch.float32, device=device).div_(255)
        self.rotations = 4 if rotations else 1
        self.n_classes = len(self.images) * self.rotations

    def sample(self, n_tasks, n_way, support_shots, query_shots, generator, part=slice(None)):
        """Support (x, y) and query (x, y), x of shape (tasks, n_way * shots, 1, 28, 28).
        part: only these of the n_tasks tasks are built (a process's share); the
        generator advances as for all of them, so every share is a slice of the same draw."""
        classes = torch.rand(n_tasks, self.n_classes, generator=generator)[part].argsort(dim=1)[:, :n_way]
        drawers = torch.rand(n_tasks, n_way, DRAWERS, generator=generator)[part].argsort(dim=2)
        drawers = drawers[:, :, :support_shots + query_shots]
        device = self.images.device
        characters = (classes // self.rotations).to(device)
        x = self.images[characters[:, :, None], drawers.to(device)]  # (tasks, way, shots, 28, 28)
        rotation = (classes % self.rotations).to(device)[:, :, None, None, None]
        x = sum(torch.where(rotation == r, x.rot90(r, dims=(3, 4)), 0) for r in range(self.rotations))
        y = torch.arange(n_way, device=device).view(1, n_way, 1).expand(len(x), -1, support_shots + query_shots)

        def flat(t):
            return t.reshape(len(x), -1, *t.shape[3:])
        support = (flat(x[:, :, :support_shots, None]), flat(y[:, :, :support_shots]))
        query = (flat(x[:, :, support_shots:, None]), flat(y[:, :, support_shots:]))
        return self._shuffled(support, generator, n_tasks, part), self._shuffled(query, generator, n_tasks, part)

    @staticmethod
    def _shuffled(task_data, generator, n_tasks, part):
        """The same images in a random order per task, so that mini-batches of a
        task (Reptile) mix its classes."""
        x, y = task_data
        order = torch.rand(n_tasks, y.shape[1], generator=generator)[part].argsort(dim=1).to(y.device)
        return x[torch.arange(len(x), device=y.device)[:, None], order], y.gather(1, order)
