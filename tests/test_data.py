import numpy as np
import pytest
import torch
from PIL import Image

from compression import CompressionError
from compression import data as D


def test_reads_real_fashion_mnist(fmnist):
    train, test = fmnist
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.class_counts() == [6000] * 10 and test.class_counts() == [1000] * 10
    assert train.images.dtype == torch.uint8 and 0.25 < train.images.float().mean().item() / 255 < 0.32


def test_class_subset_is_remapped(fmnist):
    train, _ = fmnist
    sub = D.select_classes(train, [7, 5])
    assert sub.classes == ["Sneaker", "Sandal"]
    assert sub.class_counts() == [6000, 6000]
    sneakers = train.images[train.labels == 7]
    assert torch.equal(sub.images[sub.labels == 0], sneakers)


@pytest.mark.parametrize("classes, message", [([], "empty"), ([3, 10], "out of range"), ([-1], "out of range"),
                                              ([2, 2], "duplicates")])
def test_bad_class_subset(fmnist, classes, message):
    with pytest.raises(CompressionError, match=message):
        D.select_classes(fmnist[0], classes)


def test_load_dataset_splits_are_seeded_stratified_and_capped():
    a = D.load_dataset(classes=[0, 1, 2], train_per_class=50, val_per_class=20, test_per_class=30, seed=3)
    b = D.load_dataset(classes=[0, 1, 2], train_per_class=50, val_per_class=20, test_per_class=30, seed=3)
    c = D.load_dataset(classes=[0, 1, 2], train_per_class=50, val_per_class=20, test_per_class=30, seed=4)
    assert a.train.class_counts() == [50] * 3 and a.val.class_counts() == [20] * 3 and a.test.class_counts() == [30] * 3
    assert a.digests == b.digests
    assert a.digests["train"] != c.digests["train"]
    assert a.digests["test"] != c.digests["test"]
    # no validation image leaks into the training set
    train_rows = {bytes(img.numpy()) for img in a.train.images}
    assert not any(bytes(img.numpy()) in train_rows for img in a.val.images)


def test_no_data_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(CompressionError) as err:
        D.find_fashion_mnist(download=False)
    message = str(err.value)
    assert "nowhere" in message and "data" in message and "download (disabled)" in message


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(CompressionError, match="does-not-exist does not exist"):
        D.find_fashion_mnist(tmp_path / "does-not-exist")


def test_truncated_idx_file(tmp_path):
    import gzip
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(10))
    with pytest.raises(CompressionError, match="truncated"):
        D._read_idx(tmp_path / "x.gz")


def test_batches_normalise_shuffle_by_epoch_and_augment(fmnist):
    split = fmnist[0].subset(torch.arange(300))
    batches = D.Batches(split, 64, (0.286,), (0.353,), shuffle=True, seed=1)
    first = [y for _, y in batches]
    again = [y for _, y in batches]
    batches.set_epoch(1)
    other = [y for _, y in batches]
    assert len(first) == 5 and sum(len(y) for y in first) == 300
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    x, _ = next(iter(D.Batches(split, 300, (0.286,), (0.353,))))
    assert abs(x.mean().item()) < 0.3 and x.shape == (300, 1, 28, 28)
    aug = D.Batches(split, 300, (0.286,), (0.353,), augment=True, channels=3)
    xa, _ = next(iter(aug))
    assert xa.shape == (300, 3, 28, 28) and not torch.equal(xa[:, :1], x)



def test_model_input_from_uint8_or_unit_floats_with_the_models_channels():
    images = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    grey = D.to_model_input(images, (0.286,), (0.353,))
    assert grey.dtype == torch.float32 and grey.shape == (5, 1, 6, 6)
    assert torch.equal(grey, (images.float() / 255 - 0.286) / 0.353)
    assert torch.equal(D.to_model_input(images.float() / 255, (0.286,), (0.353,)), grey)  # a client's [0, 1] floats
    rgb = D.to_model_input(images, (0.286,), (0.353,), channels=3)
    assert rgb.shape == (5, 3, 6, 6) and all(torch.equal(rgb[:, c:c + 1], grey) for c in range(3))
    # grey repeated over RGB beforehand (what a client may send) gives the same input
    assert torch.equal(D.to_model_input(images.expand(-1, 3, -1, -1).float() / 255, (0.286,), (0.353,)), rgb)
    assert torch.equal(D.Batches(D.Split(images, torch.zeros(5, dtype=torch.int64), ["a"]), 5, (0.286,), (0.353,),
                                 channels=3).normalize(images), rgb)
    unit = D.to_model_input(images, channels=3)  # no statistics: [0, 1], as clients send images
    assert torch.equal(unit, (images.float() / 255).expand(-1, 3, -1, -1))


def test_model_input_averages_statistics_of_another_channel_count():
    imagenet = D.NORMALIZATION["imagenet"]
    grey = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    mean, std = torch.tensor(imagenet[0]).mean(), torch.tensor(imagenet[1]).mean()
    assert torch.equal(D.to_model_input(grey, *imagenet), torch.full((1, 1, 2, 2), 1.0).sub(mean).div(std))
    colour = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x = D.to_model_input(colour, *imagenet, channels=3)
    assert [round(v, 4) for v in x[0, :, 0, 0].tolist()] == [round(-m / s, 4) for m, s in zip(*imagenet)]
    with pytest.raises(CompressionError, match="images have 3 channels, the model expects 1"):
        D.to_model_input(colour, *imagenet, channels=1)

def _write_images(root, classes, per_class, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder(tmp_path):
    _write_images(tmp_path / "imgs", ["cat", "dog", "fox"], 6)
    bundle = D.load_dataset("image-folder", data_dir=str(tmp_path / "imgs"), val_per_class=1, image_size=16)
    assert bundle.classes == ["cat", "dog", "fox"]
    images, labels = next(bundle.pixel_batches("train", 64))
    assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8 and len(labels) == len(bundle.train)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 18


def test_image_folder_with_one_class(tmp_path):
    _write_images(tmp_path / "imgs", ["cat"], 3)
    with pytest.raises(CompressionError, match="1 class folder"):
        D.load_dataset("image-folder", data_dir=str(tmp_path / "imgs"))


def test_cifar10_from_local_batches(tmp_path):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                         "labels": list(range(10)) * 2}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    bundle = D.load_dataset("cifar10", data_dir=str(tmp_path), val_per_class=2)
    assert bundle.train.images.shape[1:] == (3, 32, 32) and bundle.classes == names
    assert bundle.test.class_counts() == [2] * 10
    (folder / "test_batch").unlink()
    with pytest.raises(CompressionError, match="lacks test_batch"):
        D.load_dataset("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(CompressionError, match="unknown dataset 'mnist3d'"):
        D.load_dataset("mnist3d")


def test_unlabeled_transfer_set_is_disjoint_and_hides_labels():
    bundle = D.load_dataset(classes=[5, 9], train_per_class=30, unlabeled_per_class=50, val_per_class=10,
                            test_per_class=10, seed=2)
    assert len(bundle.unlabeled) == 100 and (bundle.unlabeled.labels == -1).all()
    labelled = {bytes(img.numpy()) for img in bundle.train.images} | {bytes(img.numpy()) for img in bundle.val.images}
    assert not any(bytes(img.numpy()) in labelled for img in bundle.unlabeled.images)
    assert len(bundle.transfer) == 160 and "unlabeled" in bundle.digests
    with pytest.raises(CompressionError, match="needs a label budget"):
        D.load_dataset(classes=[5, 9], unlabeled_per_class=5)
