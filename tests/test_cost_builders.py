"""The registered cost builders and build_cost's contract."""
import json

import pytest
import torch

from tllib_jtln.config import Config
from tllib_jtln.cost import COSTS, build_cost, cost_options, normalize_cost, seeded_derangement
from tllib_jtln.errors import UserError


def clustered(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 16, generator=g) * 4
    pi = torch.tensor([4, 1, 3])
    sl = torch.arange(6).repeat_interleave(20)
    tl = torch.arange(3).repeat_interleave(5)
    sf = centres[sl] + torch.randn(len(sl), 16, generator=g)
    tf = centres[pi[tl]] + torch.randn(len(tl), 16, generator=g)
    return sf, sl, tf, tl, pi


def test_registry_lists_every_cost():
    assert set(COSTS.names()) == {"knn", "centroid", "source-head", "semantic", "uniform", "shuffled", "file:PATH"}


def test_unknown_cost_is_a_user_error_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'centroid'"):
        build_cost("centriod", num_source_classes=2, num_target_classes=2)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="did you mean 'semantic_file'"):
        build_cost("uniform", num_source_classes=2, num_target_classes=2, semantic_fil="x")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_centroid_recovers_the_pairing(metric):
    sf, sl, tf, tl, pi = clustered()
    cost = build_cost("centroid", sf, sl, tf, tl, metric=metric)
    assert cost.shape == (6, 3)
    assert torch.equal(cost.argmin(0), pi)
    assert float(cost.max()) == pytest.approx(1.0) and float(cost.min()) >= 0


def test_centroid_distance_values():
    sf = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    tf = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1])
    raw = build_cost("centroid", sf, labels, tf, labels, normalize="none")
    torch.testing.assert_close(raw, torch.tensor([[0.0, 2.0], [1.0, 1.0]]))  # 1 - cos
    euclid = build_cost("centroid", sf, labels, tf, labels, metric="euclidean", normalize="none")
    assert euclid[0].tolist() == pytest.approx([2.0, 2.0])


def test_counts_from_labels_and_options():
    sf, sl, tf, tl, _ = clustered()
    assert build_cost("uniform", sf, sl, tf, tl).shape == (6, 3)
    assert build_cost("uniform", num_source_classes=4, target_classes=["a", "b"]).shape == (4, 2)
    with pytest.raises(UserError, match="target label 2 is out of range for 2 target classes"):
        build_cost("centroid", sf, sl, tf, tl, num_target_classes=2)
    with pytest.raises(UserError, match="number of source classes is unknown"):
        build_cost("uniform", num_target_classes=2)
    with pytest.raises(UserError, match="dimension 16 but target features 8"):
        build_cost("knn", sf, sl, tf[:, :8], tl)
    with pytest.raises(UserError, match="source_features, source_labels missing"):
        build_cost("knn", None, None, tf, tl, num_source_classes=6)


def test_normalize_switch():
    sf, sl, tf, tl, _ = clustered()
    raw = build_cost("centroid", sf, sl, tf, tl, metric="euclidean", normalize="none")
    normed = build_cost("centroid", sf, sl, tf, tl, metric="euclidean")
    assert float(raw.max()) > 2.0
    torch.testing.assert_close(normed, raw / raw.max())
    column = build_cost("centroid", sf, sl, tf, tl, metric="euclidean", normalize="column")
    floor, top = raw.min(0).values, raw.max(0).values
    torch.testing.assert_close(column, (raw - floor) / (top - floor))
    assert torch.equal(column.min(0).values, torch.zeros(raw.shape[1]))  # no column keeps a floor
    assert torch.equal(column.max(0).values, torch.ones(raw.shape[1]))
    # a column without spread is the uniform cost, never 0/0
    flat = normalize_cost(torch.tensor([[0.5, 0.0], [0.5, 2.0]]), "column")
    assert torch.equal(flat, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="normalize: must be one of global, column, none"):
        normalize_cost(raw, "max")


def test_shuffled_is_a_row_permutation_of_its_base():
    sf, sl, tf, tl, _ = clustered()
    base = build_cost("knn", sf, sl, tf, tl, k=5)
    shuffled = build_cost("shuffled", sf, sl, tf, tl, k=5, base="knn", seed=3)
    assert not torch.equal(shuffled, base)
    assert torch.equal(shuffled.flatten().sort().values, base.flatten().sort().values)
    perm = seeded_derangement(6, 3)
    assert torch.equal(shuffled, base[perm])
    assert not (perm == torch.arange(6)).any()  # no source row keeps its place
    assert torch.equal(build_cost("shuffled", sf, sl, tf, tl, k=5, seed=3), shuffled)  # seeded
    assert not torch.equal(seeded_derangement(6, 4), perm)
    centroid = build_cost("centroid", sf, sl, tf, tl)
    assert torch.equal(build_cost("shuffled", sf, sl, tf, tl, base="centroid", seed=3), centroid[perm])
    with pytest.raises(UserError, match="--cost-base"):
        build_cost("shuffled", sf, sl, tf, tl, base="shuffled")
    assert torch.equal(seeded_derangement(2, 0), torch.tensor([1, 0]))


def test_source_head_is_the_mean_softmax_relation():
    tl = torch.tensor([0, 0, 1])
    probs = torch.tensor([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.0, 0.5, 0.5]])
    cost = build_cost("source-head", target_labels=tl, source_probs=probs)
    # relation R = [[0.7, 0.0], [0.3, 0.5], [0.0, 0.5]]; cost = 1 - R / 0.7
    expected = 1 - torch.tensor([[0.7, 0.0], [0.3, 0.5], [0.0, 0.5]]) / 0.7
    torch.testing.assert_close(cost, expected)
    with pytest.raises(UserError, match="no pretrained source head"):
        build_cost("source-head", target_labels=tl, num_source_classes=3)
    with pytest.raises(UserError, match="softmax"):
        build_cost("source-head", target_labels=tl, source_probs=probs * 3)


def test_semantic_from_json_and_csv(tmp_path):
    table = {"cat": [1.0, 0.0], "dog": [0.9, 0.1], "car": [0.0, 1.0], "truck": [0.1, 1.0]}
    path = tmp_path / "emb.json"
    path.write_text(json.dumps(table))
    cost = build_cost("semantic", source_classes=["dog", "truck"], target_classes=["Car", "cat"],
                      semantic_file=str(path))
    assert cost.argmin(0).tolist() == [1, 0]  # Car -> truck (case-insensitive match), cat -> dog
    csv_path = tmp_path / "emb.csv"
    csv_path.write_text("name,x,y\n" + "".join(f"{k},{v[0]},{v[1]}\n" for k, v in table.items()))
    torch.testing.assert_close(build_cost("semantic", source_classes=["dog", "truck"], target_classes=["car", "cat"],
                                          semantic_file=str(csv_path)), cost)
    with pytest.raises(UserError, match="no embedding for target class 'horse'"):
        build_cost("semantic", source_classes=["dog"], target_classes=["horse"], semantic_file=str(path))
    with pytest.raises(UserError, match="needs --semantic-file"):
        build_cost("semantic", source_classes=["dog"], target_classes=["cat"])


def test_cost_options_from_config():
    cfg = Config(cost_k=7, cost_index="ivfpq", cost_nprobe=4, cost_metric="euclidean", cost_seed=2,
                 cost_base="centroid", semantic_file="e.json", cost_normalize="none", cost_source_per_class=3)
    assert cost_options(cfg) == {"k": 7, "index": "ivfpq", "nprobe": 4, "metric": "euclidean", "seed": 2,
                                 "base": "centroid", "semantic_file": "e.json", "normalize": "none",
                                 "source_per_class": 3}
    sf, sl, tf, tl, _ = clustered()
    build_cost("centroid", sf, sl, tf, tl, **cost_options(Config()))  # every option is accepted
