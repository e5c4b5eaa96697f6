"""collect_features: batching and modes; the weights' fingerprint (the on-disk store: test_feature_store.py)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tllib_jtln.cost import collect_features, weights_fingerprint


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5))
        self.calls = 0

    def forward_features(self, x):
        self.calls += 1
        assert not self.training and not torch.is_grad_enabled()
        return self.body(x)

    forward = forward_features


def loader():
    x = torch.randn(10, 3, 2, 2)
    y = torch.arange(10) % 3
    return DataLoader(TensorDataset(x, y), batch_size=4)


def test_features_and_labels_in_order():
    model, data = Counting(), loader()
    feats, labels = collect_features(model, data, progress=False)
    assert feats.shape == (10, 5) and feats.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == (torch.arange(10) % 3).tolist()
    model.eval()
    with torch.no_grad():
        expected = model.body(data.dataset.tensors[0])
    torch.testing.assert_close(feats, expected)


def test_modes_are_restored_including_mixed_ones():
    model = Counting()
    model.train()
    model.body[2].eval()  # frozen BatchNorm
    collect_features(model.forward_features, loader(), progress=False)  # a bound method works too
    assert model.training and model.body[1].training and not model.body[2].training


def test_fingerprint_sees_parameters_and_buffers():
    model = Counting()
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before
    model.body[2].running_mean.add_(0.5)
    after_buffer = weights_fingerprint(model)
    assert after_buffer != before
    model.body[1].weight.data[0, 0] += 1e-3
    assert weights_fingerprint(model) != after_buffer
    assert weights_fingerprint(model.to(torch.bfloat16))  # any dtype hashes
