"""The method registry: every method's loss terms, stages, state, and the JTLN OT gradient paths."""
from __future__ import annotations

import json
import copy
from types import SimpleNamespace

import numpy as np

import pytest
import torch
import torch.nn as nn

from tllib_jtln.config import Config
from tllib_jtln.data import JointBatch
from tllib_jtln.errors import UserError
from tllib_jtln.methods import METHODS, SetupContext, build_method, forward_joint
from tllib_jtln.methods.co_tuning import category_relation
from tllib_jtln.methods.jtln import head_prototypes
from tllib_jtln.models import JointClassifier, create_backbone

KS, KT, SIZE = 5, 4, 16


def make_task(source: bool = True):
    return SimpleNamespace(source_train=[0] * 20 if source else None,
                           source_classes=[f"s{i}" for i in range(KS)] if source else None,
                           target_classes=[f"t{i}" for i in range(KT)], in_chans=1, image_size=SIZE)


def make_model(pretrained_head: bool = False) -> JointClassifier:
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1, image_size=SIZE)
    head = nn.Linear(backbone.out_features, KS) if pretrained_head else None
    return JointClassifier(backbone, KS, KT, source_head=head)


def make_ctx(model: JointClassifier) -> SetupContext:
    images = {"source": torch.randn(20, 1, SIZE, SIZE), "target": torch.randn(12, 1, SIZE, SIZE)}
    labels = {"source": torch.arange(20) % KS, "target": torch.arange(12) % KT}
    calls = []

    def feature_fn(split):
        calls.append(split)
        model.eval()
        with torch.no_grad():
            feats = model.forward_features(images[split])
        model.train()
        return feats, labels[split]

    datasets = {split: torch.utils.data.TensorDataset(images[split], labels[split]) for split in images}
    ctx = SetupContext(model=model, device=torch.device("cpu"), feature_fn=feature_fn,
                       source_classes=[f"s{i}" for i in range(KS)], target_classes=[f"t{i}" for i in range(KT)],
                       dataset_fn=datasets.__getitem__)
    ctx.calls = calls
    return ctx


def make_batch(source: bool = True) -> JointBatch:
    return JointBatch(torch.randn(6, 1, SIZE, SIZE) if source else None, torch.arange(6) % KS if source else None,
                      torch.randn(4, 1, SIZE, SIZE), torch.arange(4) % KT)


def make_cfg(method: str, **kw) -> Config:
    return Config(method=method, **{"cost": "centroid", "epochs": 2, **kw})


def run_setup(method, model, ctx):
    method.prepare_model(model)
    method.setup(ctx)
    method.on_epoch_start(0, ctx)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_both_stages(name):
    cfg, task = make_cfg(name), make_task()
    method = build_method(cfg, task)
    model, ctx = make_model(pretrained_head=name == "lwf"), make_ctx(make_model())  # lwf distils a pretrained head
    ctx.model = model
    start = copy.deepcopy(model)  # the weights a resumed run's fresh model has
    run_setup(method, model, ctx)
    assert method.uses_target
    seen = set()
    stages = method.stages()
    assert stages[-1].selects and stages[-1].uses_target  # the last stage trains and selects the target head
    for index, (epoch, progress) in enumerate(((0, 0.1), (1, 0.9))):
        method.on_stage_start(min(index, len(stages) - 1), ctx)
        method.on_epoch_start(epoch, ctx)
        model.zero_grad()
        terms = method.losses(model, make_batch(method.uses_source), progress)
        assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
        sum(terms.values()).backward()
        seen |= set(terms)
    # by the end of training the target head has learnt
    assert model.target_head.weight.grad is not None and model.target_head.weight.grad.abs().sum() > 0
    assert "ce_target" in seen
    # state round trip, as a resumed run: a fresh model at the starting weights, prepare_model, then
    # the trained weights and the method's state: the same losses
    state = method.state_dict()
    other, resumed = build_method(cfg, task), start
    other.prepare_model(resumed)
    resumed.load_state_dict(model.state_dict())
    other.load_state_dict(state)
    other.on_stage_start(len(stages) - 1, ctx)  # as the engine does on resume
    batch = make_batch(method.uses_source)
    torch.manual_seed(3)  # the same draws for both (bi_tuning's key view)
    a = {k: v.item() for k, v in method.losses(model.eval(), batch, 0.9).items()}
    torch.manual_seed(3)
    b = {k: v.item() for k, v in other.losses(resumed.eval(), batch, 0.9).items()}
    assert a == pytest.approx(b)


def test_erm_and_consecutive_stages():
    method = build_method(make_cfg("erm"), make_task())
    assert not method.uses_source
    model = make_model()
    method.prepare_model(model)
    assert not model.source_head.weight.requires_grad  # unused head frozen (DDP-safe)
    assert set(method.losses(model, make_batch(False), 0.0)) == {"ce_target"}
    method = build_method(make_cfg("consecutive"), make_task())
    stages = method.stages()
    assert [(s.name, s.uses_source, s.uses_target, s.selects) for s in stages] == [
        ("source", True, False, False), ("target", False, True, True)]
    method.on_stage_start(0, None)
    assert set(method.losses(model, make_batch(), 0.9)) == {"ce_source"}  # the stage decides, not progress
    method.on_stage_start(1, None)
    assert set(method.losses(model, make_batch(), 0.1)) == {"ce_target"}
    for name in ("consecutive", "joint"):
        with pytest.raises(UserError, match=f"--method {name} needs source data"):
            build_method(make_cfg(name), make_task(source=False))


def test_joint_forwards_once():
    calls = []
    model = make_model()

    def counting(x, **kw):
        calls.append(x.shape[0])
        return model(x, **kw)

    terms = build_method(make_cfg("joint"), make_task()).losses(counting, make_batch(), 0.5)
    assert calls == [10] and set(terms) == {"ce_source", "ce_target"}
    out_s, out_t = forward_joint(model, None, torch.randn(3, 1, SIZE, SIZE))
    assert out_s is None and out_t.source_logits.shape == (3, KS) and out_t.target_logits.shape == (3, KT)
    assert out_t.features.shape == (3, model.head_dim)


def _ot_grads(cfg, source=True, pretrained_head=False):
    task = make_task(source)
    method = build_method(cfg, task)
    model = make_model(pretrained_head)
    run_setup(method, model, make_ctx(model))
    terms = method.losses(model, make_batch(source), 0.5)
    model.zero_grad()
    terms["ot"].backward()

    def norm(module):
        grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
        return float(sum(grads)) if grads else 0.0

    return terms, norm(model.source_head), norm(model.backbone), norm(model.target_head), model, method


def test_jtln_ot_gradient_reaches_source_head_and_trunk_not_target_head():
    terms, source_head, trunk, target_head, _, method = _ot_grads(make_cfg("jtln", ot_on="target"))
    assert set(terms) == {"ce_source", "ce_target", "ot"}
    assert source_head > 0 and trunk > 0 and target_head == 0
    assert method.cost.shape == (KS, KT) and method.artifacts()["cost"].max() == pytest.approx(1.0)
    # OT on source samples with source labels: roles swap, only the target side learns
    _, source_head, trunk, target_head, _, _ = _ot_grads(make_cfg("jtln", ot_on="source"))
    assert source_head == 0 and trunk > 0 and target_head > 0
    # weight scales the term
    torch.manual_seed(0)
    t1 = _ot_grads(make_cfg("jtln", ot_on="target", ot_target="label"))[0]["ot"]
    torch.manual_seed(0)
    t2 = _ot_grads(make_cfg("jtln", ot_on="target", ot_target="label", ot_weight=2.0))[0]["ot"]
    assert t2.item() == pytest.approx(2 * t1.item(), rel=1e-4)


def test_jtln_default_is_the_papers_constraint_on_the_source_classifier():
    method = build_method(make_cfg("jtln"), make_task())
    assert method.ot_on == "target" and method.switches()["ot_on"] == "target"
    assert build_method(make_cfg("jtln", cost="uniform"), make_task(source=False)).ot_on == "target"
    # the default with source data: the OT term trains the source head and the trunk, not the target head
    _, source_head, trunk, target_head, _, _ = _ot_grads(make_cfg("jtln"))
    assert source_head > 0 and trunk > 0 and target_head == 0


def test_jtln_source_free():
    cfg = make_cfg("jtln", cost="source-head")
    terms, source_head, trunk, target_head, model, method = _ot_grads(cfg, source=False, pretrained_head=True)
    assert not method.uses_source and set(terms) == {"ce_target", "ot"}
    assert method.cost.shape == (KS, KT) and method.cost.min() >= 0 and method.cost.max() == pytest.approx(1.0)
    assert not model.source_head.weight.requires_grad  # source-free: the pretrained head M relates is frozen
    assert source_head == 0 and trunk > 0 and target_head == 0
    # knn without source images: target features against the source head's class prototypes
    terms, _, _, _, model, method = _ot_grads(make_cfg("jtln", cost="knn", cost_k=2), source=False,
                                              pretrained_head=True)
    assert method.cost.shape == (KS, KT) and torch.isfinite(terms["ot"])
    prototypes, labels = head_prototypes(model)
    assert torch.equal(prototypes, model.source_head.weight.detach()) and torch.equal(labels, torch.arange(KS))
    with pytest.raises(UserError, match="--ot-on source needs source data"):
        build_method(make_cfg("jtln", ot_on="source"), make_task(source=False))
    with pytest.raises(UserError, match="needs a source head"):
        build_method(make_cfg("jtln", cost="uniform"), make_task(source=False)).prepare_model(
            JointClassifier(create_backbone("smallcnn", pretrained=False, in_chans=1), 0, KT))


@pytest.mark.parametrize("cost", ["taxonomy", "shuffled"])
def test_jtln_taxonomy_cost_forwards_no_image(cost, tmp_path):
    """A cost from class names alone (taxonomy:FILE, and its shuffled control) is built without
    extracting features; a feature cost (centroid) extracts them."""
    tree = tmp_path / "tree.yaml"
    tree.write_text("a: [s0, s1, t0]\nb: [s2, s3, s4, t1, t2, t3]\n")
    name = f"taxonomy:{tree}"
    kw = {"cost": name} if cost == "taxonomy" else {"cost": "shuffled", "cost_base": name}
    method = build_method(make_cfg("jtln", **kw), make_task())
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    assert ctx.calls == [] and method.cost.shape == (KS, KT)
    if cost == "taxonomy":
        assert method.cost[:2, 0].tolist() == [0.5, 0.5] and method.cost[2:, 0].tolist() == [1.0] * 3
    featured = build_method(make_cfg("jtln", cost="centroid"), make_task())
    run_setup(featured, model, ctx)
    assert ctx.calls == ["target", "source"]


def test_jtln_cost_refresh_rebuilds_from_fresh_features():
    method = build_method(make_cfg("jtln", cost="knn", cost_k=3, cost_refresh=2, epochs=4), make_task())  # FAISS
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    assert ctx.calls == ["target", "source"]
    method.on_epoch_start(1, ctx)
    assert len(ctx.calls) == 2
    first = method.cost.clone()
    with torch.no_grad():
        model.backbone.blocks[0][0].weight.mul_(-1.0)  # the trunk changes: the refreshed cost follows
    method.on_epoch_start(2, ctx)
    assert ctx.calls[2:] == ["target", "source"] and method.cost.shape == (KS, KT)
    assert not torch.equal(first, method.cost)


@pytest.mark.parametrize("cost", ["uniform", "semantic", "file", "shuffled-semantic"])
def test_jtln_costs_that_read_no_features_run_no_feature_pass(cost, tmp_path):
    names = [f"s{i}" for i in range(KS)] + [f"t{j}" for j in range(KT)]
    embeddings = tmp_path / "emb.json"
    embeddings.write_text(json.dumps({name: [float(i), 1.0] for i, name in enumerate(names)}))
    matrix = tmp_path / "cost.npy"
    np.save(matrix, np.arange(KS * KT, dtype=np.float32).reshape(KS, KT))
    settings = {"uniform": {"cost": "uniform"}, "semantic": {"cost": "semantic"}, "file": {"cost": f"file:{matrix}"},
                "shuffled-semantic": {"cost": "shuffled", "cost_base": "semantic"}}[cost]
    method = build_method(make_cfg("jtln", semantic_file=str(embeddings), cost_refresh=1, **settings), make_task())
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    method.on_epoch_start(1, ctx)  # a refresh
    assert ctx.calls == [] and method.cost.shape == (KS, KT)


def test_jtln_source_head_cost_of_a_new_head_is_uniform_until_the_first_refresh():
    with pytest.raises(UserError, match="--cost-refresh"):
        method = build_method(make_cfg("jtln", cost="source-head"), make_task())
        model = make_model()
        run_setup(method, model, make_ctx(model))
    method = build_method(make_cfg("jtln", cost="source-head", cost_refresh=1), make_task())
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    assert torch.equal(method.cost, torch.ones(KS, KT)) and ctx.calls == []  # nothing learned yet: no relation
    with torch.no_grad():
        model.source_head.bias.copy_(torch.arange(KS, dtype=torch.float32))  # the head now prefers class 4
    method.on_epoch_start(1, ctx)
    assert method.cost.shape == (KS, KT) and method.cost[KS - 1].max() < method.cost[0].min()
    learned = method.cost.clone()
    control = build_method(make_cfg("jtln", cost="shuffled", cost_base="source-head", cost_refresh=1), make_task())
    run_setup(control, model, ctx)
    assert torch.equal(control.cost, torch.ones(KS, KT))
    control.on_epoch_start(1, ctx)  # the same relation, its source rows permuted
    assert not torch.equal(control.cost, learned)
    assert torch.equal(control.cost.sort(0).values, learned.sort(0).values)


def test_jtln_source_stage_trains_the_source_head_first_then_builds_the_cost_from_it():
    for kw, message in (({"ot_on": "source"}, "--ot-on source with --source-stage"), ({}, "--source-stage needs source")):
        with pytest.raises(UserError, match=message):
            build_method(make_cfg("jtln", source_stage=True, **kw), make_task(source="ot_on" in kw))
    # the source head is new: its relation exists only after the source stage, which builds it
    method = build_method(make_cfg("jtln", source_stage=True, cost="source-head", cost_refresh=1), make_task())
    stages = method.stages()
    assert [(s.uses_source, s.uses_target, s.selects) for s in stages] == [(True, False, False), (False, True, True)]
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    method.on_stage_start(0, ctx)
    method.on_epoch_start(1, ctx)  # a refresh epoch of the source stage: no M there
    assert method.cost is None and ctx.calls == []
    terms = method.losses(model, make_batch(), 0.0)
    assert set(terms) == {"ce_source"}
    terms["ce_source"].backward()
    assert model.target_head.weight.grad is None
    with torch.no_grad():
        model.source_head.bias.copy_(torch.arange(KS, dtype=torch.float32))  # what the stage taught the head
    method.on_stage_start(1, ctx)
    calls = list(ctx.calls)
    assert "target" in calls and method.cost[KS - 1].max() < method.cost[0].min()
    assert set(method.losses(model, make_batch(source=False), 0.5)) == {"ce_target", "ot"}
    resumed = build_method(make_cfg("jtln", source_stage=True, cost="source-head", cost_refresh=1), make_task())
    resumed.load_state_dict(method.state_dict())
    resumed.on_stage_start(1, ctx)  # a resume inside the JTLN stage keeps the checkpoint's M
    assert torch.equal(resumed.cost, method.cost) and ctx.calls == calls


def test_jtln_source_stage_refresh_counts_epochs_of_the_jtln_stage_and_builds_once_at_its_start():
    epochs = 5
    method = build_method(make_cfg("jtln", source_stage=True, cost="knn", cost_k=2, cost_refresh=2, epochs=epochs),
                          make_task())
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    method.on_stage_start(0, ctx)
    for epoch in range(1, epochs):
        method.on_epoch_start(epoch, ctx)
    assert ctx.calls == []  # the source stage has no M
    built = []
    method.on_stage_start(1, ctx)
    for epoch in range(epochs, 2 * epochs):
        method.on_epoch_start(epoch, ctx)
        built.append(len(ctx.calls) // 2)  # two feature passes (target, source) per build
    # built at the stage start only (not again by its first epoch), then at its epochs 2 and 4
    assert built == [1, 1, 2, 2, 3]


def test_jtln_and_co_tuning_build_their_state_on_the_main_process_only():
    """Under DDP only rank 0 extracts features and builds M (or the relation); the engine broadcasts it."""
    for name, kw, stage_built in (("jtln", {"source_stage": True, "cost_refresh": 1}, "cost"),
                                  ("co_tuning", {}, "relation")):
        method = build_method(make_cfg(name, epochs=2, **kw), make_task())
        model = make_model()
        ctx = make_ctx(model)
        ctx.is_main = False  # rank 1 of 2
        run_setup(method, model, ctx)
        method.on_stage_start(1, ctx)
        method.on_epoch_start(3, ctx)  # a refresh epoch of the JTLN stage
        assert ctx.calls == [] and getattr(method, stage_built) is None, name
        ctx.is_main = True
        method.on_stage_start(1, ctx)
        assert ctx.calls and getattr(method, stage_built) is not None, name


def test_co_tuning_relation():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    relation = category_relation(probs, torch.tensor([0, 0, 2]), 3)
    assert torch.allclose(relation, torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]))
    relation = category_relation(probs, torch.tensor([0, 1, 1]), 2)
    assert torch.allclose(relation, torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    # source-free: relation from the pretrained head in setup
    method = build_method(make_cfg("co_tuning"), make_task(source=False))
    model = make_model(pretrained_head=True)
    run_setup(method, model, make_ctx(model))
    assert method.relation.shape == (KT, KS) and torch.allclose(method.relation.sum(1), torch.ones(KT))
    terms = method.losses(model, make_batch(False), 0.0)
    assert set(terms) == {"ce_target", "co_tuning"} and terms["co_tuning"] > 0
    assert [s.name for s in method.stages()] == ["co_tuning"]
    # with source data: a source stage first, the relation at the start of the co-tuning stage
    method = build_method(make_cfg("co_tuning", epochs=4), make_task())
    assert [(s.name, s.uses_source, s.uses_target, s.selects) for s in method.stages()] == [
        ("source", True, False, False), ("co_tuning", False, True, True)]
    model = make_model()
    ctx = make_ctx(model)
    run_setup(method, model, ctx)
    method.on_stage_start(0, ctx)
    assert method.relation is None and set(method.losses(model, make_batch(), 0.1)) == {"ce_source"}
    method.on_epoch_start(3, ctx)
    assert method.relation is None
    method.on_stage_start(1, ctx)
    assert method.relation is not None and set(method.losses(model, make_batch(), 0.6)) == {"ce_target", "co_tuning"}


def test_unknown_method_one_line_with_close_names():
    with pytest.raises(UserError) as info:
        build_method(Config(method="jtnl"), make_task())
    message = str(info.value)
    assert "\n" not in message and "unknown method 'jtnl'" in message and "'jtln'" in message
