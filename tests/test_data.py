import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dae_core import raw_files
from dae_core.data import DataError, batch_indices, check_raw_files, file_digest, load_split, locate, read_idx
from tests.conftest import make_dataset, synthetic_digits, write_idx


def test_generated_idx_is_parsed_exactly(tmp_path):
    images, labels = synthetic_digits(30, seed=5)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    split = load_split(tmp_path, train=True)
    assert split.images.dtype == torch.uint8 and split.images.shape == (30, 28, 28)
    assert np.array_equal(split.images.numpy(), images)
    assert np.array_equal(split.labels.numpy(), labels.astype(np.int64))
    assert split.flat_pixels(torch.float32).max() <= 1.0


def _valid(tmp_path):
    images, labels = synthetic_digits(20, seed=6)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    return tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"\x01\x02" + b[2:], "bad magic"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "expected unsigned byte"),
    (lambda b: b[:-7], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b"", "bad magic empty"),
])
def test_malformed_image_files_are_refused_naming_the_file(tmp_path, damage, message):
    images, _ = _valid(tmp_path)
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(DataError) as refused:
        load_split(tmp_path, train=True)
    assert str(images) in str(refused.value) and message in str(refused.value)


def test_wrong_shape_label_range_and_count_mismatch_are_refused(tmp_path):
    images, labels = _valid(tmp_path)
    write_idx(images, np.zeros((20, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"\(28, 28\)"):
        load_split(tmp_path, train=True)
    write_idx(images, np.zeros((20, 28, 28), np.uint8))
    write_idx(labels, np.full(20, 10, np.uint8))
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        load_split(tmp_path, train=True)
    write_idx(labels, np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="19 labels for 20 images"):
        load_split(tmp_path, train=True)
    write_idx(labels, np.zeros((20, 1), np.uint8))
    with pytest.raises(DataError, match="2 dimensions, expected 1"):
        read_idx(labels, ndim=1)


def test_limit_larger_than_the_split_names_the_field(tmp_path):
    _valid(tmp_path)
    assert len(load_split(tmp_path, train=True, limit=5)) == 5
    with pytest.raises(DataError, match="data.train_limit = 21") as refused:
        load_split(tmp_path, train=True, limit=21)
    # Task errors cross processes pickled: the copy says the same, fix included.
    assert str(pickle.loads(pickle.dumps(refused.value))) == str(refused.value)


def test_missing_files_without_download_are_reported(tmp_path):
    with pytest.raises(DataError, match="downloading is disabled"):
        locate(tmp_path, "mnist", allow_download=False)


def test_digest_identifies_the_content(tmp_path):
    raw = make_dataset(tmp_path)
    before = file_digest(raw)
    assert before == file_digest(raw)
    path = raw / "t10k-labels-idx1-ubyte"
    blob = bytearray(path.read_bytes())
    blob[-1] = (blob[-1] + 1) % 10
    path.write_bytes(bytes(blob))
    assert file_digest(raw) != before


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """torchvision's real download_url (md5 check included) against an offline mirror:
    only the network primitives are replaced. ``served[url]`` says what each URL returns."""
    from torchvision import datasets
    from torchvision.datasets import utils

    source = make_dataset(tmp_path / "served")
    archives = {}
    for name in raw_files.RAW_FILES:
        archives[f"{name}.gz"] = gzip.compress((source / name).read_bytes(), mtime=0)
    resources = [(archive, hashlib.md5(blob).hexdigest()) for archive, blob in archives.items()]
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["https://one.invalid/", "https://two.invalid/"])
    requested: list[str] = []
    behaviour = {"https://one.invalid/": "down", "https://two.invalid/": "ok"}

    def retrieve(url, path, *args, **kwargs):
        requested.append(url)
        base, archive = url.rsplit("/", 1)
        mode = behaviour[base.replace("http:", "https:") + "/"]
        if mode == "down":
            raise OSError("mirror down")
        Path(path).write_bytes(archives[archive] if mode == "ok" else b"corrupted" + archives[archive][9:])

    monkeypatch.setattr(raw_files, "network_reachable", lambda hosts: True)  # the .invalid mirrors do not resolve
    monkeypatch.setattr(utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(utils, "_urlretrieve", retrieve)
    return {"source": source, "requested": requested, "behaviour": behaviour}


def test_download_goes_through_torchvision_mirrors_with_checksums(tmp_path, mirror):
    folder = locate(tmp_path / "root", "mnist", allow_download=True)
    assert folder == tmp_path / "root" / "MNIST" / "raw"
    assert file_digest(folder) == file_digest(mirror["source"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(raw_files.RAW_FILES)  # no scratch left behind
    assert any("two.invalid" in url for url in mirror["requested"])


def test_a_checksum_mismatch_is_fetched_again_once_then_fails_clearly(tmp_path, mirror):
    mirror["behaviour"].update({"https://one.invalid/": "corrupt", "https://two.invalid/": "ok"})
    has_raw = locate(tmp_path / "a", "mnist")
    assert file_digest(has_raw) == file_digest(mirror["source"])
    mirror["behaviour"]["https://two.invalid/"] = "corrupt"
    with pytest.raises(DataError, match="checksum mismatch.*checksum mismatch"):
        locate(tmp_path / "b", "mnist")
    assert not any((tmp_path / "b" / "MNIST" / "raw").iterdir()), "nothing half-downloaded may remain"


def test_download_failure_names_the_file(tmp_path, mirror):
    mirror["behaviour"].update({"https://one.invalid/": "down", "https://two.invalid/": "down"})
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz"):
        locate(tmp_path, "mnist")
    assert not any((tmp_path / "MNIST" / "raw").iterdir())


def test_batches_cover_every_index_once_and_follow_the_seed():
    def draw(seed):
        generator = torch.Generator().manual_seed(seed)
        return list(batch_indices(105, 20, generator, torch.device("cpu")))

    batches = draw(1)
    assert [len(b) for b in batches] == [20] * 5 + [5]
    assert sorted(torch.cat(batches).tolist()) == list(range(105))
    assert all(torch.equal(a, b) for a, b in zip(batches, draw(1), strict=True))
    assert not torch.equal(torch.cat(batches), torch.cat(draw(2)))


def test_fashion_mnist_uses_torchvisions_folder(tmp_path):
    make_dataset(tmp_path, folder="FashionMNIST")
    folder = locate(tmp_path, "fashion_mnist", allow_download=False)
    assert folder == tmp_path / "FashionMNIST" / "raw"
    assert len(load_split(folder, train=False)) == 80
    with pytest.raises(DataError, match="MNIST/raw: missing"):
        locate(tmp_path, "mnist", allow_download=False)


def test_without_network_the_download_gives_up_at_once(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(raw_files, "network_reachable", lambda hosts: False)
    with pytest.raises(raw_files.DataMissing, match="no network"):
        locate(tmp_path, "mnist")
    assert mirror["requested"] == []


def test_check_raw_files_refuses_a_truncated_file(tmp_path):
    raw = make_dataset(tmp_path)
    check_raw_files(raw)
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: truncated"):
        check_raw_files(raw)
