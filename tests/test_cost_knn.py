"""FAISS neighbour search and the knn cost."""
import warnings

import numpy as np
import pytest
import torch

from tllib_jtln.cost import build_cost, knn_affinity, knn_search, knn_search_torch, l2_normalize


def clustered(num_source_classes=8, pairing=(5, 0, 7, 2), dim=32, per_source=30, per_target=6, seed=0):
    """Source class s ~ N(c_s, I); target class t ~ N(c_{pi(t)}, I) with well-separated centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_source_classes, dim, generator=g) * 4
    pi = torch.tensor(pairing)
    sl = torch.arange(num_source_classes).repeat_interleave(per_source)
    tl = torch.arange(len(pairing)).repeat_interleave(per_target)
    sf = centres[sl] + torch.randn(len(sl), dim, generator=g)
    tf = centres[pi[tl]] + torch.randn(len(tl), dim, generator=g)
    return sf, sl, tf, tl, pi


def brute_force(db, q, k):
    sims = q @ db.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def test_faiss_flat_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((500, 24)).astype(np.float32)
    q = rng.standard_normal((60, 24)).astype(np.float32)
    scores, ids = knn_search(torch.from_numpy(db), torch.from_numpy(q), k=7)
    ref_scores, ref_ids = brute_force(db.astype(np.float64), q.astype(np.float64), 7)
    assert ids.shape == (60, 7) and ids.dtype == torch.int64
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-4, atol=1e-4)


def test_torch_reference_equals_numpy_and_k_is_clipped():
    rng = np.random.default_rng(1)
    db = rng.standard_normal((40, 8)).astype(np.float32)
    q = rng.standard_normal((9, 8)).astype(np.float32)
    scores, ids = knn_search_torch(torch.from_numpy(db), torch.from_numpy(q), k=5, chunk_size=4)
    _, ref_ids = brute_force(db.astype(np.float64), q.astype(np.float64), 5)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    _, ids_big = knn_search(torch.from_numpy(db), torch.from_numpy(q), k=100)
    assert ids_big.shape == (9, 40)


@pytest.mark.parametrize("index", ["ivfsq", "ivfpq"])
def test_ivf_neighbours_carry_the_exact_labels_and_exact_scores(index):
    sf, sl, tf, _, _ = clustered(per_source=60, dim=16)
    _, exact = knn_search(sf, tf, 5, index="flat", cosine=True)
    scores, approx = knn_search(sf.half(), tf, 5, index=index, nprobe=1000, cosine=True)  # every list visited
    assert (approx >= 0).all()
    assert (sl[approx] == sl[exact]).float().mean() >= 0.95  # what the knn cost reads: the neighbours' classes
    # candidates are re-scored exactly: the scores are the cosines of the returned rows, not PQ estimates
    direct = (l2_normalize(tf).unsqueeze(1) * l2_normalize(sf.half().float())[approx]).sum(-1)
    torch.testing.assert_close(scores, direct, atol=1e-5, rtol=0)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first


def test_exact_search_in_chunks_equals_one_pass(monkeypatch):
    from tllib_jtln.cost import knn

    rng = np.random.default_rng(2)
    db = torch.from_numpy(rng.standard_normal((3000, 8)).astype(np.float32))
    q = torch.from_numpy(rng.standard_normal((20, 8)).astype(np.float32))
    whole = knn_search(db, q, 6, index="flat")
    monkeypatch.setattr(knn, "chunk_rows", lambda dim: 700)  # 5 chunks, the last one short
    chunked = knn_search(db, q, 6, index="flat")
    assert torch.equal(chunked[1], whole[1])
    torch.testing.assert_close(chunked[0], whole[0])


def test_affinity_is_the_similarity_weighted_share():
    # two target images of class 0, one of class 1; source labels of the database rows
    source_labels = torch.tensor([0, 1, 1, 2])
    target_labels = torch.tensor([0, 0, 1])
    ids = torch.tensor([[0, 1], [1, 3], [2, -1]])
    scores = torch.tensor([[0.9, 0.3], [0.6, -0.5], [0.8, 0.7]])
    a, mass = knn_affinity(scores, ids, source_labels, target_labels, 3, 2)
    # class 0: weights 0.9 (s0), 0.3 (s1), 0.6 (s1), 0 (s2, negative similarity) -> mass 1.8
    assert mass.tolist() == pytest.approx([1.8, 0.8])
    assert a[:, 0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert a[:, 1].tolist() == pytest.approx([0.0, 1.0, 0.0])  # the -1 id is ignored


@pytest.mark.parametrize("index", ["auto", "flat", "ivfsq", "ivfpq", "torch"])
def test_knn_recovers_the_pairing(index):
    sf, sl, tf, tl, pi = clustered()
    cost = build_cost("knn", sf, sl, tf, tl, k=5, index=index)
    assert cost.shape == (8, 4) and cost.dtype == torch.float32
    assert float(cost.min()) >= 0 and float(cost.max()) == pytest.approx(1.0)
    assert torch.equal(cost.argmin(0), pi)


def test_knn_falls_back_to_centroid_with_a_warning_naming_the_class():
    sf, sl, tf, tl, pi = clustered()
    sf = sf.abs() + 0.1  # every source feature in the positive orthant
    tf = tf.abs() + 0.1
    tf[tl == 2] = -tf[tl == 2]  # class 2: every cosine similarity negative -> no neighbour mass
    names = ["cat", "dog", "zebra", "owl"]
    with pytest.warns(UserWarning, match="target class 2 'zebra'"):
        cost = build_cost("knn", sf, sl, tf, tl, k=3, target_classes=names)
    centroid = build_cost("centroid", sf, sl, tf, tl)
    col = cost[:, 2]
    assert float(col.min()) == pytest.approx(0.0) and float(col.max()) == pytest.approx(1.0)
    assert torch.equal(col.argsort(), centroid[:, 2].argsort())  # same order as the centroid column
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cost("knn", sf, sl, tf.abs(), tl, k=3)  # no class without mass: no warning
    with pytest.warns(UserWarning, match="target class 4 .*without target images"):
        extra = build_cost("knn", sf, sl, tf.abs(), tl, k=3, num_target_classes=5)
    assert torch.equal(extra[:, 4], torch.ones(8))  # no images: no centroid either
