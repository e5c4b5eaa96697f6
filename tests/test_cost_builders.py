"""The registered cost builders and build_cost's contract."""
import json
from pathlib import Path

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
    assert set(COSTS.names()) == {"knn", "centroid", "source-head", "semantic", "uniform", "shuffled", "file:PATH",
                                 "taxonomy:FILE"}


def test_each_cost_says_which_features_it_reads():
    from tllib_jtln.cost import features_read

    assert features_read("knn") == features_read("centroid") == ("source", "target")
    assert features_read("source-head") == ("target",)
    assert features_read("uniform") == features_read("semantic") == features_read("file:m.npy") == ()
    assert features_read("shuffled", base="source-head") == ("target",)
    assert features_read("shuffled", base="file:m.npy") == ()
    with pytest.raises(UserError, match="did you mean 'centroid'"):
        features_read("centriod")


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
    cfg = Config(cost_k=7, cost_index="ivfpq", cost_nprobe=4,
                 cost_base="centroid", semantic_file="e.json", cost_normalize="none", cost_source_per_class=3)
    assert cost_options(cfg) == {"k": 7, "index": "ivfpq", "nprobe": 4, "base": "centroid", "semantic_file": "e.json", "normalize": "none",
                                 "source_per_class": 3}
    sf, sl, tf, tl, _ = clustered()
    build_cost("centroid", sf, sl, tf, tl, **cost_options(Config()))  # every option is accepted


# ----------------------------------------------------------------------------- taxonomy:FILE
SMALL_TREE = """\
animals:
  pets: [cat, dog]
  farm:
    - cow
    - {poultry: [hen]}
plants: tree
rock:
"""


def test_taxonomy_cost_is_the_tree_distance_over_the_largest_by_hand(tmp_path):
    """Paths from the root: cat (animals, pets, cat), dog (animals, pets, dog), cow (animals, farm,
    cow), hen (animals, farm, poultry, hen), tree (plants, tree), rock (rock). Edges between leaves:
    cat-dog 2, cat-cow 4, cat-tree 5, hen-cow 3, hen-tree 6, rock-tree 3, rock-dog 4: the largest is
    hen-tree's 6 (a match ignores case: 'Tree' is tree)."""
    from tllib_jtln.cost import load_taxonomy, taxonomy_cost, tree_distance

    path = tmp_path / "tree.yaml"
    path.write_text(SMALL_TREE)
    assert load_taxonomy(path)["hen"] == ("animals", "farm", "poultry", "hen")
    assert load_taxonomy(path)["rock"] == ("rock",)
    assert tree_distance(("a", "b", "c"), ("a", "b", "c")) == 0
    # rows cat, hen, rock; columns dog, cow, tree
    expected = torch.tensor([[2.0, 4.0, 5.0], [5.0, 3.0, 6.0], [4.0, 4.0, 3.0]]) / 6
    torch.testing.assert_close(taxonomy_cost(path, ["cat", "hen", "rock"], ["dog", "tree", "Tree"]).float(),
                               torch.tensor([[2.0, 5.0, 5.0], [5.0, 6.0, 6.0], [4.0, 3.0, 3.0]]) / 6)
    cost = build_cost(f"taxonomy:{path}", source_classes=["cat", "hen", "rock"], target_classes=["dog", "cow", "tree"],
                      normalize="none")
    torch.testing.assert_close(cost, expected)
    # --cost-normalize applies as to every cost: global makes the split's largest entry 1
    torch.testing.assert_close(build_cost(f"taxonomy:{path}", source_classes=["cat", "hen", "rock"],
                                          target_classes=["dog", "cow", "tree"]), expected / expected.max())


def test_taxonomy_file_problems_are_one_line_errors(tmp_path):
    path = tmp_path / "tree.yaml"
    path.write_text(SMALL_TREE)
    for source, target, message in ((["cat"], ["horse"], "target class 'horse' is not in the file"),
                                    (["Dgo"], ["cat"], "did you mean 'dog'")):
        with pytest.raises(UserError, match=message) as info:
            build_cost(f"taxonomy:{path}", source_classes=source, target_classes=target)
        assert "\n" not in str(info.value)
    twice = tmp_path / "twice.yaml"
    twice.write_text("a: [x, y]\nb: [x]\n")
    with pytest.raises(UserError, match="class 'x' is named twice"):
        build_cost(f"taxonomy:{twice}", source_classes=["x"], target_classes=["y"])
    bad_leaf = tmp_path / "number.yaml"
    bad_leaf.write_text("a: [x, 3]\n")
    with pytest.raises(UserError, match="leaf 3 under a is not a class name"):
        build_cost(f"taxonomy:{bad_leaf}", source_classes=["x"], target_classes=["y"])
    with pytest.raises(UserError, match="file not found"):
        build_cost(f"taxonomy:{tmp_path / 'missing.yaml'}", source_classes=["x"], target_classes=["y"])
    with pytest.raises(UserError, match="needs a hierarchy file"):
        build_cost("taxonomy:", source_classes=["x"], target_classes=["y"])


FASHION_TAXONOMY = Path(__file__).resolve().parents[1] / "configs" / "taxonomy" / "fashion_mnist.yaml"


def test_shipped_fashion_mnist_taxonomy_serves_every_class_split():
    """Any partition of the ten classes gets the sub-matrix of one 10 x 10 distance table (a cost
    that does not depend on the split), with values 1/3 (one group), 2/3 (one department) or 1;
    its shuffled control permutes the source rows."""
    from tllib_jtln.data.fashion_mnist import CLASSES, random_class_split

    full = build_cost(f"taxonomy:{FASHION_TAXONOMY}", source_classes=list(CLASSES), target_classes=list(CLASSES),
                      normalize="none")
    assert set(torch.round(full * 3).unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    name = {c: i for i, c in enumerate(CLASSES)}
    assert full[name["Shirt"], name["T-shirt/top"]] == pytest.approx(1 / 3)
    assert full[name["Sandal"], name["Sneaker"]] == pytest.approx(2 / 3)
    assert full[name["Bag"], name["Dress"]] == pytest.approx(1.0)
    for index in range(5):
        source, target = random_class_split(index)
        s_names, t_names = [CLASSES[i] for i in source], [CLASSES[i] for i in target]
        cost = build_cost(f"taxonomy:{FASHION_TAXONOMY}", source_classes=s_names, target_classes=t_names,
                          normalize="none")
        torch.testing.assert_close(cost, full[list(source)][:, list(target)])
        shuffled = build_cost("shuffled", base=f"taxonomy:{FASHION_TAXONOMY}", source_classes=s_names,
                              target_classes=t_names, normalize="none", seed=3)
        torch.testing.assert_close(shuffled, cost[seeded_derangement(len(source), 3)])
