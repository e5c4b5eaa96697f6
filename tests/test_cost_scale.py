"""The cost at scale: index choice by size, per-class sampling, fp16 features, agreement with exact."""
import numpy as np
import pytest
import torch

from tllib_jtln.cost import build_cost
from tllib_jtln.cost.agreement import cost_agreement
from tllib_jtln.cost.index_choice import EXACT_BUDGET, choose_index
from tllib_jtln.cost.subsample import sample_per_class
from tllib_jtln.errors import UserError


def test_index_choice_by_size():
    small = choose_index(100_000, 2_000, 512)
    assert small.kind == "flat" and "budget" in small.describe()
    few_queries = choose_index(1_281_167, 2_000, 2048)  # over the budget, but the index's set-up costs as much
    assert few_queries.kind == "flat" and "too few target rows" in few_queries.reason
    big = choose_index(1_281_167, 20_000, 512, k=10)  # 8-bit scalar codes: 656 MB, within the code budget
    assert big.kind == "ivfsq" and big.nlist == 1132 and big.m == 0 and big.nbits == 8
    assert big.refine == 100 and big.train_rows == 64 * 1132 and "IVF-SQ" in big.describe()
    assert "512 bytes a row" in big.describe()
    wide = choose_index(1_281_167, 40_000, 2048, k=10)  # 8-bit codes 2.6 GB, 4-bit 1.3 GB: both over 1 GiB
    assert wide.kind == "ivfpq" and wide.m == 128 and wide.refine == 400 and "IVF-PQ" in wide.describe()
    mid = choose_index(800_000, 40_000, 2048, k=10)  # 8-bit codes 1.6 GB, 4-bit 0.8 GB
    assert mid.kind == "ivfsq" and mid.nbits == 4 and mid.refine == 200
    assert choose_index(1_281_167, 20_000, 512, requested="flat").kind == "flat"
    forced = choose_index(1_281_167, 2_000, 512, requested="ivfpq")
    assert forced.kind == "ivfpq" and forced.m == 64 and forced.nbits == 8 and forced.refine == 400
    assert choose_index(50, 5, 8, requested="ivfsq", nprobe=3).nprobe == 1  # one list: nprobe clipped
    assert choose_index(10, 10, 8, budget=10 * 10 * 8).kind == "flat"
    assert choose_index(10**6, 10**5, 64, budget=EXACT_BUDGET).kind == "ivfsq"
    with pytest.raises(ValueError, match="auto, flat, ivfsq, ivfpq"):
        choose_index(10, 10, 8, requested="hnsw")


def test_sample_per_class_is_seeded_per_class_and_sorted():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)[torch.randperm(20)]
    rows = sample_per_class(labels, 4, seed=5)
    assert torch.equal(rows, rows.sort().values) and rows.unique().numel() == rows.numel()
    assert torch.bincount(labels[rows]).tolist() == [4, 3, 4]  # class 1 has only 3
    assert torch.equal(rows, sample_per_class(labels, 4, seed=5))
    assert not torch.equal(rows, sample_per_class(labels, 4, seed=6))
    state = torch.get_rng_state()
    sample_per_class(labels, 4, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def _related(seed=0, ks=30, kt=8, dim=24, per_source=80, per_target=6):
    """Source classes in 6 families; target class t near source class pi(t) and its family."""
    g = torch.Generator().manual_seed(seed)
    family = torch.randn(6, dim, generator=g) * 2
    centres = family[torch.arange(ks) % 6] + torch.randn(ks, dim, generator=g)
    pi = torch.randperm(ks, generator=g)[:kt]
    sl = torch.arange(ks).repeat_interleave(per_source)
    tl = torch.arange(kt).repeat_interleave(per_target)
    sf = centres[sl] + 0.8 * torch.randn(len(sl), dim, generator=g)
    tf = centres[pi[tl]] + 0.8 * torch.randn(len(tl), dim, generator=g)
    return sf, sl, tf, tl


def test_sampled_cost_agrees_with_the_exact_one_and_says_so():
    sf, sl, tf, tl = _related()  # 80 source images per class
    messages = []
    exact = {name: build_cost(name, sf, sl, tf, tl, k=10) for name in ("knn", "centroid")}
    sampled = {n: {name: build_cost(name, sf, sl, tf, tl, k=10, source_per_class=n, log=messages.append)
                   for name in exact} for n in (10, 40, 80)}
    assert "at most 10 images per class: 300 of 2,400 rows (seed 0)" in messages[0] and "exact search" in messages[1]
    for name in exact:
        assert torch.equal(sampled[80][name], exact[name])  # every image kept: the exact cost
        assert cost_agreement(sampled[10][name], exact[name])["same_nearest_source"] == 1.0
    # class means barely move; the knn cost's sparse tail (which rare classes show up among the k
    # neighbours) does, and comes closer as more images are kept
    assert cost_agreement(sampled[40]["centroid"], exact["centroid"])["spearman"] >= 0.99
    rho = [cost_agreement(sampled[n]["knn"], exact["knn"])["spearman"] for n in (10, 40)]
    assert 0.5 < rho[0] < rho[1] < 1.0
    with pytest.raises(UserError, match="--cost-source-per-class"):
        build_cost("knn", sf, sl, tf, tl, source_per_class=0)


def test_fp16_features_give_the_cost_of_their_float32_values():
    sf, sl, tf, tl = _related()
    half = sf.half()
    for name in ("knn", "centroid"):
        torch.testing.assert_close(build_cost(name, half, sl, tf, tl), build_cost(name, half.float(), sl, tf, tl))
    exact = build_cost("knn", half, sl, tf, tl, k=10)
    ivfpq = build_cost("knn", half, sl, tf, tl, k=10, index="ivfpq")
    assert cost_agreement(ivfpq, exact)["same_nearest_source"] == 1.0
    # 8-bit scalar codes rank the candidates almost as exact search does: the whole matrix agrees
    ivfsq = build_cost("knn", half, sl, tf, tl, k=10, index="ivfsq")
    assert cost_agreement(ivfsq, exact)["spearman"] >= 0.99


def test_agreement_of_a_matrix_with_itself_and_with_its_reverse():
    m = torch.rand(7, 5)
    assert cost_agreement(m, m) == {"spearman": pytest.approx(1.0), "same_nearest_source": 1.0}
    assert cost_agreement(-m, m)["spearman"] == pytest.approx(-1.0)


def _resident_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def test_reading_a_memory_map_in_chunks_does_not_keep_it_resident(tmp_path):
    from tllib_jtln.cost.paging import is_file_mapping, row_chunks

    path = tmp_path / "features.f16"
    written = np.memmap(path, dtype=np.float16, mode="w+", shape=(65536, 512))  # 64 MiB
    written[:] = 1
    written.flush()
    del written
    mapped = torch.from_numpy(np.memmap(path, dtype=np.float16, mode="c", shape=(65536, 512)))
    assert is_file_mapping(mapped) and not is_file_mapping(torch.ones(65536, 512, dtype=torch.float16))
    before = _resident_kb()
    total = sum(float(chunk.float().sum()) for _, chunk in row_chunks(mapped, 4096))
    assert total == 65536 * 512 and _resident_kb() - before < 32 * 1024  # a chunk or two, not 64 MiB
    assert float(mapped[-1].float().sum()) == 512  # the file is still there to read again
    assert float(build_cost("centroid", mapped, torch.arange(65536) % 4, torch.ones(4, 512),
                            torch.arange(4)).max()) == 1.0


def test_scattered_rows_of_a_memory_map_are_gathered_without_keeping_it_resident(tmp_path):
    from tllib_jtln.cost.paging import gather_rows

    path = tmp_path / "features.f16"
    written = np.memmap(path, dtype=np.float16, mode="w+", shape=(65536, 512))  # 64 MiB
    written[:] = (np.arange(65536) % 1024).astype(np.float16)[:, None]
    written.flush()
    del written
    mapped = torch.from_numpy(np.memmap(path, dtype=np.float16, mode="c", shape=(65536, 512)))
    rows = torch.randperm(65536)[:8192]  # one row in 8, scattered: read-ahead would map the whole file
    before = _resident_kb()
    gathered = gather_rows(mapped, rows, block=1024)
    assert _resident_kb() - before < 24 * 1024
    assert torch.equal(gathered[:, 0], (rows % 1024).half())
    assert torch.equal(gather_rows(torch.arange(10).view(5, 2), torch.tensor([3, 1])), torch.tensor([[6, 7], [2, 3]]))
