"""Optional download of the standard data sets, verified by md5 before use.

Nothing here runs unless asked: loaders only read local files. A failed download names the exact
URLs and the folder to put them in, so an offline machine can be fed by hand.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sharpshift.errors import UserError


@dataclass(frozen=True)
class Source:
    folder: str                          # where the data ends up under root
    files: tuple[tuple[str, str], ...]   # (url, md5)
    archive: bool = False                # a tar.gz holding `folder`, extracted into root


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"
_STL10 = Source("stl10_binary", (("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                                  "91f7769df0f17e558f3565bffb0c7dfb"),), archive=True)

SOURCES: dict[str, Source] = {
    "mnist": Source("mnist", (
        (_MNIST + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        (_MNIST + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        (_MNIST + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        (_MNIST + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    )),
    "fashion-mnist": Source("fashion-mnist", (
        (_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        (_FASHION + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        (_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        (_FASHION + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    )),
    "cifar10": Source("cifar-10-batches-py", (("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                               "c58f30108f718f92721af3b95e74349a"),), archive=True),
    "cifar100": Source("cifar-100-python", (("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                             "eb9058c3a382ffc7106e4002c42a8d85"),), archive=True),
    "stl10": _STL10,
    "stl10-unlabeled": _STL10,
    "stl10-train+unlabeled": _STL10,
}


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_archive(archive: Path, root: Path) -> None:
    """Extract a tarball into root via a temp folder, so a top folder in root means a complete extraction."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")  # refuses absolute paths, '..' and links leaving tmp
                else:  # Python < 3.10.12: the same refusal by hand, minus the link targets
                    for m in tar.getmembers():
                        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                            raise tarfile.TarError(f"unsafe member {m.name!r}")
                    tar.extractall(tmp)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"cannot extract {archive}: {e}; delete it and download it again") from None
        for item in tmp.iterdir():
            if not (root / item.name).exists():
                os.replace(item, root / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(url: str, md5: str, target: Path, timeout: float) -> None:
    """Stream url to a temp file next to target, check md5, then rename (never a half file at target)."""
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=target.parent)
    tmp = Path(tmp_name)
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                h.update(block)
        if h.hexdigest() != md5:
            raise UserError(f"checksum mismatch for {url}: got md5 {h.hexdigest()}, expected {md5}; "
                            f"try again or place a good copy at {target}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def download_dataset(name: str, root: str | Path, timeout: float = 30.0) -> Path:
    """Download (if needed) and verify data set `name` into root; return the folder holding its files."""
    if name not in SOURCES:
        raise UserError(f"no download known for {name!r}; choose one of {sorted(SOURCES)}")
    src = SOURCES[name]
    root = Path(root).expanduser()
    dest = root / src.folder
    (root if src.archive else dest).mkdir(parents=True, exist_ok=True)
    if src.archive and dest.is_dir():
        return dest  # extracted before; extraction is all-or-nothing
    where = root if src.archive else dest
    for i, (url, md5) in enumerate(src.files):
        target = where / url.rsplit("/", 1)[-1]
        if target.is_file() and md5sum(target) == md5:
            continue
        try:
            _fetch(url, md5, target, timeout)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            urls = " ".join(u for u, _ in src.files[i:])
            how = f"extract it there so {dest} exists" if src.archive else "keep the file names"
            raise UserError(f"cannot download {name} ({reason}): download {urls} into {where} and {how} "
                            f"(or pass --data-dir to a folder that has them)") from None
    if src.archive:
        archive = root / src.files[0][0].rsplit("/", 1)[-1]
        extract_archive(archive, root)
        if not dest.is_dir():
            raise UserError(f"{archive} did not contain {src.folder}/; delete it and download it again")
        archive.unlink()  # the extracted folder is what loaders read; don't keep the data twice
    return dest
