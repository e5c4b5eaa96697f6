"""The faces a TLlib or timm user expects: the regularisers as loss modules, sinkhorn(method=...),
the architecture table, timm's head vocabulary on JointClassifier, and the doctests of the library."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import tllib_jtln.ot
from tllib_jtln.ot import sinkhorn


def _modules(package):
    yield package
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"{package.__name__}.{info.name}")


@pytest.mark.parametrize("package", [tllib_jtln.ot], ids=["ot"])
def test_doctests_of_the_library_pass(package):
    attempted = 0
    for module in _modules(package):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted > 0


# ----------------------------------------------------------------------------- sinkhorn(method=...)
def _problem(b=3, ks=6, kt=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(b, ks, generator=gen, dtype=torch.float64).softmax(1)
    q = torch.rand(b, kt, generator=gen, dtype=torch.float64).softmax(1)
    return p, q, torch.rand(ks, kt, generator=gen, dtype=torch.float64)


def test_sinkhorn_method_is_explicit_and_the_regimes_agree():
    p, q, cost = _problem()
    results = {m: sinkhorn(p, q, cost, 0.1, max_iter=5000, tol=1e-12, method=m) for m in ("auto", "scaling", "log")}
    assert results["auto"].method == "scaling" and results["scaling"].method == "scaling"
    assert results["log"].method == "log"
    for m in ("scaling", "log"):
        torch.testing.assert_close(results[m].transport_cost, results["auto"].transport_cost, rtol=1e-9, atol=0)
        torch.testing.assert_close(results[m].value, results["auto"].value, rtol=1e-9, atol=0)


def test_sinkhorn_auto_is_the_default_and_bad_methods_are_named():
    p, q, cost = _problem()
    default, auto = sinkhorn(p, q, cost, 0.1), sinkhorn(p, q, cost, 0.1, method="auto")
    assert torch.equal(default.value, auto.value) and default.method == auto.method
    with pytest.raises(ValueError, match="method: must be one of auto, scaling, log"):
        sinkhorn(p, q, cost, 0.1, method="sinkhorn_log")
    with pytest.raises(ValueError, match="eps: .*method='log'"):  # the scaling iterations underflow
        sinkhorn(p.float(), q.float(), cost.float() * 1000, 1e-3, method="scaling")
    assert sinkhorn(p.float(), q.float(), cost.float() * 1000, 1e-3, method="auto").method == "log"
