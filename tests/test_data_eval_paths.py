"""Evaluation paths never run the training augmentation: validation, test and the feature view
(``eval_view``) give the same tensor every time an image is read; the training split does not."""
import pytest
import torch
from test_data_imagelist import CUB_FOLDERS, cfg_for, make_tllib_dataset

from tllib_jtln.config import Config
from tllib_jtln.data import build_task
from tllib_jtln.data import fashion_mnist as fm


def _stable(dataset, index: int = 0, reads: int = 8) -> bool:
    first = dataset[index][0]
    return all(torch.equal(first, dataset[index][0]) for _ in range(reads))


def _check(task, augmentation_visible: bool = True):
    for split in (task.target_val, task.target_test, task.eval_view("target"), task.eval_view("source")):
        assert _stable(split)
    if augmentation_visible:  # the check above could pass for lack of augmentation anywhere
        assert not _stable(task.target_train) and not _stable(task.source_train)


@pytest.mark.parametrize("transforms", ["small", "tllib"])
def test_tllib_format_task_evaluates_without_augmentation(tmp_path, transforms):
    make_tllib_dataset(tmp_path, CUB_FOLDERS)
    task = build_task(cfg_for("CUB200", tmp_path, transforms=transforms, val_per_class=1, num_samples_per_class=2,
                              source_data="CUB200", source_root=str(tmp_path)))
    # the miniature images are plain colours: a random resized crop of one looks the same (tllib)
    _check(task, augmentation_visible=transforms == "small")


@pytest.mark.skipif(fm.locate(None) is None, reason="Fashion-MNIST is not installed")
def test_embedded_task_evaluates_without_augmentation():
    _check(build_task(Config(num_samples_per_class=2, val_per_class=1, source_per_class=2, transforms="small",
                             image_size=28)))


def test_eval_view_refuses_rather_than_hand_out_the_augmented_training_set():
    from torch.utils.data import TensorDataset

    from tllib_jtln.data import TransferTask
    from tllib_jtln.data.memory import TensorImages

    images, labels = torch.zeros(4, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    with_subset = TensorImages(images, labels, ["a", "b"], lambda x: x.float().unsqueeze(0))
    plain = TensorDataset(images.float().unsqueeze(1), labels)
    common = dict(name="t", target_val=None, target_test=plain, target_classes=["a", "b"])
    with pytest.raises(ValueError, match="no eval_transform"):
        TransferTask(target_train=with_subset, **common).eval_view("target")
    with pytest.raises(ValueError, match="TensorDataset has no subset"):
        TransferTask(target_train=plain, eval_transform=lambda x: x, **common).eval_view("target")
    view = TransferTask(target_train=with_subset, eval_transform=lambda x: x.float().unsqueeze(0), **common)
    assert len(view.eval_view("target")) == 4
