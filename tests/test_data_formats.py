"""The CIFAR, STL-10, image-folder and download code on tiny files written in the real formats."""
from __future__ import annotations

import hashlib
import os
import pickle
import struct
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sharpshift.data import download
from sharpshift.data.folder import load_image_folder
from sharpshift.data.registry import load_dataset
from sharpshift.errors import UserError


# ---------------------------------------------------------------- CIFAR

def _cifar_batch(path, n, seed, label_key=b"labels", n_classes=10):
    """A batch like the official ones: a protocol-2 dict with bytes keys, data (n, 3072) uint8."""
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"test batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         label_key: [int(v) for v in rng.integers(0, n_classes, n)],
         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def _write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(folder / f"data_batch_{i}", 2, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(folder / "test_batch", 3, 9)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": 2}, f, protocol=2)
    return folder, batches


def test_cifar10_shapes_labels_pixels(tmp_path):
    folder, batches = _write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=str(tmp_path))
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    # row layout: 1024 R values, then G, then B, each 32x32 row-major
    row = batches["data_batch_1"][b"data"][1]
    assert train.images[1, 2, 3, 4].item() == row[2 * 1024 + 3 * 32 + 4]
    test = load_dataset("cifar10", "test", data_dir=str(folder))  # the batches folder itself works too
    assert test.images.shape == (3, 3, 32, 32)
    assert np.array_equal(test.images.reshape(3, -1).numpy(), batches["test_batch"][b"data"])


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    d = _cifar_batch(folder / "train", 4, 1, b"fine_labels", 100)
    _cifar_batch(folder / "test", 2, 2, b"fine_labels", 100)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"x"] * 20}, f, protocol=2)
    ds = load_dataset("cifar100", "train", data_dir=str(tmp_path))
    assert ds.images.shape == (4, 3, 32, 32) and ds.labels.tolist() == d[b"fine_labels"]
    assert ds.classes[99] == "c99" and ds.num_classes == 100


def test_cifar_from_tar_gz_is_extracted_once(tmp_path):
    src = tmp_path / "src"
    _write_cifar10(src)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(load_dataset("cifar10", "test", data_dir=str(data))) == 3
    assert (data / "cifar-10-batches-py" / "test_batch").is_file()


def _py2_pickle(data, labels):
    """A batch as Python 2 wrote it: py2 str opcodes (-> bytes) and the numpy.core.multiarray global."""
    def s(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b
    n, m = data.shape
    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
           + b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", m) + b"\x86" + dtype
           + b"\x89" + s(data.tobytes()) + b"tb")
    labs = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + labs + b"u."


def test_cifar_python2_pickle(tmp_path):
    folder, _ = _write_cifar10(tmp_path)
    data = np.random.default_rng(3).integers(0, 256, (2, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(_py2_pickle(data, [3, 7]))
    ds = load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert ds.labels.tolist() == [3, 7] and np.array_equal(ds.images.reshape(2, -1).numpy(), data)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    folder, _ = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"refusing to unpickle .*system.* not a CIFAR batch") as e:
        load_dataset("cifar10", "test", data_dir=str(tmp_path))
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_cifar_missing_and_garbage(tmp_path):
    with pytest.raises(UserError, match="cifar10 not found"):
        load_dataset("cifar10", "train", data_dir=str(tmp_path))
    folder, _ = _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="cannot read CIFAR file"):
        load_dataset("cifar10", "test", data_dir=str(tmp_path))


# ---------------------------------------------------------------- STL-10

def _write_stl(root, n_train=4, n_test=2, n_unlab=3):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlab)):
        x = rng.integers(0, 256, n * 27648, dtype=np.uint8)
        x.tofile(folder / f"{split}_X.bin")
        files[split] = x
        if split != "unlabeled":
            np.arange(1, n + 1, dtype=np.uint8).tofile(folder / f"{split}_y.bin")  # 1-based on disk
    (folder / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return folder, files


def test_stl10_column_major_layout_and_labels(tmp_path):
    folder, _ = _write_stl(tmp_path)
    # image 1, channel 2, row h=5, column w=70 sits at c*96*96 + w*96 + h (each channel stored column-major)
    raw = np.fromfile(folder / "train_X.bin", dtype=np.uint8)
    raw[27648 + 2 * 9216 + 70 * 96 + 5] = 201
    raw[27648 + 2 * 9216 + 5 * 96 + 70] = 7  # the transposed position, to tell the two apart
    raw.tofile(folder / "train_X.bin")
    ds = load_dataset("stl10", "train", data_dir=str(tmp_path))
    assert ds.images.shape == (4, 3, 96, 96) and ds.images.dtype == torch.uint8
    assert ds.images[1, 2, 5, 70].item() == 201 and ds.images[1, 2, 70, 5].item() == 7
    assert ds.labels.tolist() == [0, 1, 2, 3] and ds.labels.dtype == torch.int64
    assert ds.classes[7] == "monkey"


def test_stl10_unlabeled_splits(tmp_path):
    _, files = _write_stl(tmp_path)
    unl = load_dataset("stl10-unlabeled", "train", data_dir=str(tmp_path / "stl10_binary"))
    assert unl.images.shape == (3, 3, 96, 96) and unl.labels is None
    assert unl.images[0, 0, 0, 1].item() == files["unlabeled"][96]  # (h=0, w=1) is the 2nd column
    both = load_dataset("stl10-train+unlabeled", "train", data_dir=str(tmp_path))
    assert both.images.shape == (7, 3, 96, 96) and both.labels is None
    test = load_dataset("stl10-train+unlabeled", "test", data_dir=str(tmp_path))
    assert test.images.shape == (2, 3, 96, 96) and test.labels.tolist() == [0, 1]
    assert load_dataset("stl10-unlabeled", "test", data_dir=str(tmp_path)).labels is not None


def test_stl10_truncated(tmp_path):
    folder, _ = _write_stl(tmp_path)
    with open(folder / "test_X.bin", "ab") as f:
        f.write(b"\0" * 100)
    with pytest.raises(UserError, match="truncated"):
        load_dataset("stl10", "test", data_dir=str(tmp_path))


# ---------------------------------------------------------------- image folders

def _png(path, size=(8, 6), color=(255, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _write_folder(root):
    _png(root / "cat" / "a.png", color=(10, 20, 30))
    _png(root / "cat" / "b.png")
    _png(root / "dog" / "c.png", color=(1, 2, 3))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_folder_classes_pixels_and_skip(tmp_path):
    _write_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable file\(s\).*broken\.png") as rec:
        ds = load_image_folder(tmp_path)
    assert len(rec) == 1
    assert ds.images.shape == (3, 3, 6, 8) and ds.images.dtype == torch.uint8
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.images[0, :, 2, 3].tolist() == [10, 20, 30] and ds.images[2, :, 0, 0].tolist() == [1, 2, 3]


def test_folder_fail_names_the_file(tmp_path):
    _write_folder(tmp_path)
    with pytest.raises(UserError, match=r"cannot read image .*broken\.png") as e:
        load_image_folder(tmp_path, on_bad="fail")
    assert "\n" not in str(e.value)


def test_folder_empty_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "x.txt").write_text("no")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no readable images"):
        load_image_folder(tmp_path)


def test_folder_unifies_sizes_and_modes(tmp_path):
    _png(tmp_path / "a.png", (10, 10), 50, mode="L")
    _png(tmp_path / "b.png", (10, 10), 60, mode="L")
    _png(tmp_path / "c.png", (20, 16), 70, mode="L")
    gray = load_image_folder(tmp_path)  # flat folder: no labels; all 1-channel -> L
    assert gray.labels is None and gray.images.shape == (3, 1, 10, 10)
    assert gray.images[2].unique().tolist() == [70]  # a flat colour survives bicubic resizing
    Image.new("RGBA", (10, 10), (0, 0, 255, 255)).save(tmp_path / "d.png")
    rgb = load_image_folder(tmp_path)
    assert rgb.images.shape == (4, 3, 10, 10)
    assert rgb.images[0, :, 0, 0].tolist() == [50, 50, 50] and rgb.images[3, :, 0, 0].tolist() == [0, 0, 255]
    assert load_image_folder(tmp_path, size=4, mode="L").images.shape == (4, 1, 4, 4)


def test_folder_registry_splits(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for i in range(n):
            _png(tmp_path / split / "b" / f"{i}.png", (12, 12))
    _png(tmp_path / "test" / "a" / "x.png", (9, 9))  # a class only in test, and another size
    train = load_dataset("folder", "train", data_dir=str(tmp_path))
    test = load_dataset("folder", "test", data_dir=str(tmp_path))
    assert train.classes == test.classes == ["a", "b"]
    assert train.labels.tolist() == [1, 1] and test.labels.tolist() == [0, 1]
    assert test.images.shape[1:] == train.images.shape[1:] == (3, 12, 12)
    with pytest.warns(UserWarning, match="same images for both splits"):
        assert len(load_dataset("folder", "test", data_dir=str(tmp_path / "train"))) == 2


def test_folder_many_files_use_threads(tmp_path):
    for i in range(70):  # above the thread-pool threshold
        _png(tmp_path / f"{i:03d}.png", (4, 4), (i, i, i))
    ds = load_image_folder(tmp_path)
    assert ds.images[:, 0, 0, 0].tolist() == list(range(70))


# ---------------------------------------------------------------- download

def _serve(monkeypatch, tmp_path, name, payload, md5=None, filename="file.gz", archive=False, folder="mnist"):
    src = tmp_path / "remote" / filename
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(payload)
    md5 = md5 or hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(download.SOURCES, name, download.Source(folder, ((src.as_uri(), md5),), archive))
    return src


def test_download_file_url_with_md5(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, "mnist", b"hello idx")
    root = tmp_path / "data"
    dest = download.download_dataset("mnist", root)
    assert dest == root / "mnist" and (dest / "file.gz").read_bytes() == b"hello idx"
    assert not [p for p in dest.iterdir() if p.name.startswith(".part-")]
    assert download.download_dataset("mnist", root) == dest  # already there and verified


def test_download_extracts_tarball(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write_cifar10(src)
    tgz = tmp_path / "c.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _serve(monkeypatch, tmp_path, "cifar10", tgz.read_bytes(), filename="cifar-10-python.tar.gz", archive=True,
           folder="cifar-10-batches-py")
    root = tmp_path / "data"
    assert download.download_dataset("cifar10", root) == root / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", "train", data_dir=str(root))) == 10


def test_download_md5_mismatch(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, "mnist", b"tampered", md5="0" * 32)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="checksum mismatch"):
        download.download_dataset("mnist", root)
    assert list((root / "mnist").iterdir()) == []  # neither the file nor a temp file is left


def test_download_network_failure_names_the_files(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/nothing/train.gz"
    monkeypatch.setitem(download.SOURCES, "mnist", download.Source("mnist", ((url, "0" * 32),)))
    t = time.monotonic()
    with pytest.raises(UserError) as e:
        download.download_dataset("mnist", tmp_path, timeout=3)
    assert time.monotonic() - t < 5
    msg = str(e.value)
    assert url in msg and str(tmp_path / "mnist") in msg and "--data-dir" in msg and "\n" not in msg
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_unknown_name(tmp_path):
    with pytest.raises(UserError, match="no download known"):
        download.download_dataset("imagenet", tmp_path)
