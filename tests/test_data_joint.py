"""Joint batches: composition, endless resampling of the small target set, DDP shards, exact resume."""
import numpy as np
import pytest
import torch

from tllib_jtln.data import JointBatch, JointLoader, eval_loader, split_per_class
from tllib_jtln.data.memory import TensorImages
from tllib_jtln.data.joint import EndlessShardSampler
from tllib_jtln.data.transforms import GrayEval, GrayTrain


def tensor_set(n, num_classes, offset=0, transform=None):
    """Items whose image encodes their index: pixel (0, 0) == index + offset (before the transform)."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(n, dtype=torch.uint8) + offset
    images[:, 5:20, 5:20] = torch.randint(0, 255, (n, 15, 15), dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    return TensorImages(images, labels, [f"c{i}" for i in range(num_classes)], transform)


def ids(x):
    """Item ids back from an un-augmented batch (GrayEval keeps pixel (0, 0))."""
    return torch.round((x[:, 0, 0, 0] * 0.3530 + 0.2860) * 255).long().tolist()


def test_joint_batches_have_the_configured_composition():
    source, target = tensor_set(40, 4, transform=GrayEval()), tensor_set(6, 3, offset=100, transform=GrayEval())
    loader = JointLoader(source, target, source_batch_size=5, target_batch_size=4, seed=0)
    batch = next(loader)
    assert isinstance(batch, JointBatch)
    assert batch.x_s.shape == (5, 1, 28, 28) and batch.y_s.shape == (5,) and batch.y_s.dtype == torch.int64
    assert batch.x_t.shape == (4, 1, 28, 28) and batch.y_t.shape == (4,)
    assert all(i < 40 for i in ids(batch.x_s)) and all(100 <= i < 106 for i in ids(batch.x_t))
    assert batch.y_t.tolist() == [(i - 100) % 3 for i in ids(batch.x_t)]
    only_target = next(JointLoader(None, target, 5, 4, seed=0, use_source=False))
    assert only_target.x_s is None and only_target.y_s is None and only_target.x_t.shape[0] == 4
    only_source = next(JointLoader(source, None, 5, 4, seed=0, use_target=False))
    assert only_source.x_t is None and only_source.x_s.shape[0] == 5


def test_small_target_set_is_resampled_endlessly_and_batches_stay_full():
    target = tensor_set(3, 3, transform=GrayEval())
    loader = JointLoader(None, target, 1, 7, seed=3, use_source=False)
    stream = sum((ids(next(loader).x_t) for _ in range(6)), [])
    assert len(stream) == 42
    passes = [stream[i:i + 3] for i in range(0, 42, 3)]
    assert all(sorted(p) == [0, 1, 2] for p in passes)  # every pass is a permutation
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_seeded_and_sharded_like_distributed_sampler():
    n = 11
    same = [EndlessShardSampler(n, 4, seed=5, stream=1).indices(b) for b in range(3)]
    assert same == [EndlessShardSampler(n, 4, seed=5, stream=1).indices(b) for b in range(3)]
    assert same != [EndlessShardSampler(n, 4, seed=6, stream=1).indices(b) for b in range(3)]
    shards = [EndlessShardSampler(n, 3, seed=5, stream=0, rank=r, world_size=2) for r in range(2)]
    first_pass = [s.shard(0).tolist() for s in shards]
    assert len(first_pass[0]) == len(first_pass[1]) == 6
    assert set(first_pass[0]) | set(first_pass[1]) == set(range(n))
    assert len(set(first_pass[0]) & set(first_pass[1])) <= 1  # only the padding repeats
    assert shards[0].indices(0) + shards[0].indices(1) == first_pass[0]


def test_resume_continues_exactly_including_augmentation():
    source = tensor_set(30, 5, transform=GrayTrain(28))
    target = tensor_set(4, 2, offset=50, transform=GrayTrain(28))
    original = JointLoader(source, target, 6, 5, seed=11)
    for _ in range(7):
        next(original)
    state = original.state_dict()
    assert state["source"] == 7 and state["target"] == 7
    expected = next(original)

    resumed = JointLoader(source, target, 6, 5, seed=11)
    resumed.load_state_dict(state)
    got = next(resumed)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert not torch.equal(next(JointLoader(source, target, 6, 5, seed=12)).x_s,
                           next(JointLoader(source, target, 6, 5, seed=11)).x_s)


def test_workers_give_the_same_batches_as_the_main_process():
    source = tensor_set(20, 4, transform=GrayTrain(28))
    target = tensor_set(5, 5, offset=40, transform=GrayTrain(28))
    main = JointLoader(source, target, 4, 3, seed=2, workers=0)
    batches = [next(main) for _ in range(3)]
    workers = JointLoader(source, target, 4, 3, seed=2, workers=2)
    for expected in batches:
        got = next(workers)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    workers.close()


def test_loading_does_not_disturb_the_callers_random_state():
    source = tensor_set(10, 2, transform=GrayTrain(28))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    next(JointLoader(source, None, 4, 1, seed=0, use_target=False))
    assert torch.equal(torch.rand(3), before)


def test_eval_loader_shards_cover_every_item_once():
    dataset = tensor_set(10, 2, transform=GrayEval())
    seen = []
    for rank in range(3):
        for x, y in eval_loader(dataset, batch_size=4, workers=0, rank=rank, world_size=3):
            seen += ids(x)
    assert sorted(seen) == list(range(10))
    assert ids(next(iter(eval_loader(dataset, 4, 0)))[0]) == [0, 1, 2, 3]  # sequential


def test_split_per_class_seeded():
    targets = np.repeat(np.arange(3), 20)
    a = split_per_class(targets, 4, 5, seed=0)
    assert all(np.array_equal(u, v) for u, v in zip(a, split_per_class(targets, 4, 5, seed=0)))
    assert not np.array_equal(a[0], split_per_class(targets, 4, 5, seed=1)[0])
    assert np.bincount(targets[a[0]]).tolist() == [4, 4, 4] and np.bincount(targets[a[1]]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError):
        split_per_class(targets, 0, 5, seed=0)


def test_array_images_give_pil_images_and_subsets_keep_their_type():
    import numpy as np
    from PIL import Image

    from tllib_jtln.data.memory import ArrayImages

    data = ArrayImages(np.zeros((4, 8, 8, 3), dtype=np.uint8), [0, 1, 0, 1], ["a", "b"])
    image, label = data[1]
    assert isinstance(image, Image.Image) and image.size == (8, 8) and label == 1
    part = data.subset([1, 3])
    assert isinstance(part, ArrayImages) and part.targets == [1, 1] and part.num_classes == 2


class _OneByOne(TensorImages):
    """The same items without the batched path (``seeded_batch`` declines)."""

    def seeded_batch(self, indices, seeds=None):
        return None


@pytest.mark.parametrize("size, invert", [(28, False), (28, True), (64, False), (20, True)])
def test_batched_loading_equals_loading_item_by_item(size, invert):
    torch.manual_seed(3)
    images = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    for transform in (GrayTrain(size, invert=invert), GrayEval(size, invert=invert)):
        batched = TensorImages(images, labels, ["a", "b", "c"], transform)
        plain = _OneByOne(images, labels, ["a", "b", "c"], transform)
        assert batched.seeded_batch([0, 1]) is not None and plain.seeded_batch([0, 1]) is None
        fast, slow = JointLoader(batched, batched, 7, 5, seed=11), JointLoader(plain, plain, 7, 5, seed=11)
        for _ in range(8):  # crosses passes of the 30-item set
            a, b = next(fast), next(slow)
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        # evaluation loaders fetch through __getitems__ (global generator, item after item)
        torch.manual_seed(5)
        fast_eval = torch.cat([x for x, _ in eval_loader(batched, 8, 0)])
        torch.manual_seed(5)
        slow_eval = torch.cat([x for x, _ in eval_loader(plain, 8, 0)])
        assert torch.equal(fast_eval, slow_eval) and fast_eval.shape == (30, 1, size, size)
