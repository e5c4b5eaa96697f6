"""The widened method contract: features and feature maps of the one forward pass, the starting
weights, the optimiser's groups, TLlib's regularisers (``--with``) on erm/joint/jtln and TLlib's
fine-tuning family (l2sp, bss, delta, stochnorm, lwf, bi_tuning) on smallcnn, a timm ResNet and
tf_efficientnet_lite0."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from tllib_jtln.cli import build_parser, main
from tllib_jtln.config import Config
from tllib_jtln.data import JointBatch
from tllib_jtln.engine.run import resolve_config, train_from_flags
from tllib_jtln.engine.trainer import train
from tllib_jtln.engine.state import build_optimizer
from tllib_jtln.errors import UserError
from tllib_jtln.methods import METHODS, REGULARIZERS, SetupContext, build_method
from tllib_jtln.methods.co_tuning import load_relationship
from tllib_jtln.models import JointClassifier, create_backbone
from tllib_jtln.models.feature_maps import FeatureMapRecorder
from tllib_jtln.normalization import stochnorm_layers
from tllib_jtln.regularization import BatchSpectralShrinkage

from tiny_images import tiny_flags

KS, KT, SIZE = 5, 3, 16
#: settings that keep DELTA's channel attention to one small batch
QUICK = {"delta_attention_iters": 1, "delta_attention_batch_size": 4, "delta_attention_epochs": 2, "batch_size": 4}


def make_task(source: bool = True):
    return SimpleNamespace(source_train=[0] if source else None, source_classes=[f"s{i}" for i in range(KS)],
                           target_classes=[f"t{i}" for i in range(KT)], in_chans=1, image_size=SIZE)


def smallcnn_model(seed: int = 0) -> JointClassifier:
    torch.manual_seed(seed)
    return JointClassifier(create_backbone("smallcnn", pretrained=False, in_chans=1, image_size=SIZE), KS, KT)


def make_ctx(model, chans: int = 1, size: int = SIZE) -> SetupContext:
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, chans, size, size, generator=gen), torch.arange(8) % KT

    def features(split):
        model.eval()
        with torch.no_grad():
            out = model.forward_features(images)
        model.train()
        return out, labels

    return SetupContext(model=model, device=torch.device("cpu"), feature_fn=features,
                        dataset_fn=lambda split: torch.utils.data.TensorDataset(images, labels))


def batch(chans: int = 1, size: int = SIZE, source: bool = True) -> JointBatch:
    gen = torch.Generator().manual_seed(1)
    x_s = torch.randn(6, chans, size, size, generator=gen) if source else None
    return JointBatch(x_s, torch.arange(6) % KS if source else None, torch.randn(4, chans, size, size, generator=gen),
                      torch.arange(4) % KT)


def prepared(method_name: str, model=None, source: bool = True, **settings):
    cfg = Config(method=method_name, cost="centroid", **{**QUICK, **settings})
    method = build_method(cfg, make_task(source))
    model = model if model is not None else smallcnn_model()
    method.prepare_model(model)
    method.setup(make_ctx(model))
    method.on_stage_start(0, None)
    return method, model


@pytest.fixture(scope="module")
def backbones():
    """One backbone of each family: built here (smallcnn), timm's ResNet, timm's EfficientNet with offline weights."""
    return {"smallcnn": create_backbone("smallcnn", pretrained=False, in_chans=3, image_size=32),
            "resnet18": create_backbone("resnet18", pretrained=False, image_size=32),
            "tf_efficientnet_lite0": create_backbone("tf_efficientnet_lite0", pretrained=True, image_size=32)}


# ----------------------------------------------------------------------------- what a method may ask for
def test_forward_with_features_is_the_same_pass_plus_what_the_target_head_reads():
    model = JointClassifier(create_backbone("smallcnn", pretrained=False, in_chans=1, image_size=SIZE), KS, KT,
                            bottleneck_dim=7).eval()
    x = torch.randn(3, 1, SIZE, SIZE)
    out = model(x, with_features=True)
    source_logits, target_logits = model(x)
    assert torch.equal(out.source_logits, source_logits) and torch.equal(out.target_logits, target_logits)
    torch.testing.assert_close(out.features, model.forward_head(model.forward_features(x), pre_logits=True))
    assert out.features.shape == (3, 7) and out.rows(slice(1, None)).features.shape == (2, 7)


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18", "tf_efficientnet_lite0"])
def test_feature_maps_of_each_backbone_family_are_recorded_in_training_passes_only(arch, backbones):
    backbone, chans = copy.deepcopy(backbones[arch]), 3
    names = backbone.feature_layers()
    assert len(names) == 4
    recorder = FeatureMapRecorder(backbone, names, grad_only=True)
    backbone(torch.randn(2, chans, 32, 32))
    maps = recorder.pop()
    assert all(fm.ndim == 4 and fm.shape[0] == 2 for fm in maps)
    widths = [fm.shape[1] for fm in maps]
    if arch != "smallcnn":  # timm's own feature_info, after the stem
        assert widths == [entry["num_chs"] for entry in backbone.model.feature_info][1:]
    with torch.no_grad():
        backbone(torch.randn(2, chans, 32, 32))
    with pytest.raises(RuntimeError, match="did not run"):
        recorder.pop()
    recorder.remove()


def test_default_parameter_groups_are_tllibs_and_l2sp_delta_drop_weight_decay_where_they_penalise():
    model = smallcnn_model()
    erm, _ = prepared("erm", model=model)
    assert [(g["name"], g["lr"]) for g in erm.param_groups(model, 0.1)] == \
        [(g["name"], g["lr"]) for g in model.get_parameters(0.1)]
    for name in ("l2sp", "delta"):
        method, model = prepared(name, model=smallcnn_model())
        optimizer, _ = build_optimizer(Config(method=name, wd=5e-4), model, method)
        decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
        assert decay == {"backbone": 0.0, "target_head": 0.0}  # erm freezes the source head: no group
    jtln, model = prepared("jtln", model=smallcnn_model(), regularizers=["l2sp"])
    decay = {g["name"]: g["weight_decay"] for g in build_optimizer(Config(wd=5e-4), model, jtln)[0].param_groups}
    assert decay == {"backbone": 0.0, "target_head": 0.0, "source_head": 5e-4}  # no explicit penalty there


def test_adam_is_tllibs_other_optimizer():
    model = smallcnn_model()
    optimizer, _ = build_optimizer(Config(optimizer="Adam", momentum=0.8, wd=1e-4), model)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["betas"] == (0.8, 0.999)
    assert isinstance(build_optimizer(Config(), model)[0], torch.optim.SGD)


# ----------------------------------------------------------------------------- the terms, wired right
@pytest.mark.parametrize("method_name", ["erm", "joint", "jtln"])
def test_regularisers_see_the_target_rows_of_the_one_forward_pass(method_name):
    calls = []
    method, model = prepared(method_name, regularizers=["bss", "delta"])
    model.eval()  # BatchNorm as the frozen copy: at the starting weights the feature maps agree exactly

    def counting(x, **kw):
        calls.append(x.shape[0])
        return model(x, **kw)

    b = batch(source=method_name != "erm")
    terms = method.losses(counting, b, 0.5)
    assert len(calls) == 1  # one call through the (DDP) model per step; the frozen copy is not it
    assert terms["delta_backbone"].item() == 0.0 and terms["delta_head"].item() > 0
    with torch.no_grad():
        features = model.forward_head(model.forward_features(b.x_t), pre_logits=True)
    expected = Config().bss_trade_off * BatchSpectralShrinkage(1)(features)
    assert terms["bss"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_l2sp_pulls_back_to_the_weights_the_model_started_from():
    method, model = prepared("l2sp")
    terms = method.losses(model, batch(source=False), 0.1)
    assert terms["l2sp_backbone"].item() == 0.0
    head = sum(0.5 * float((p.detach() ** 2).sum()) for p in model.target_head.parameters())
    assert terms["l2sp_head"].item() == pytest.approx(Config().trade_off_head * head, rel=1e-6)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    n = sum(p.numel() for p in model.backbone.parameters())
    expected = Config().trade_off_backbone * 0.5 * n * 0.01
    assert method.losses(model, batch(source=False), 0.1)["l2sp_backbone"].item() == pytest.approx(expected, rel=1e-4)


def test_delta_attention_is_computed_once_and_comes_back_with_the_state():
    method, model = prepared("delta")
    reg = method.regularizers[0]
    assert reg.attention_sizes.tolist() == [32, 64, 128, 128]
    sums = [a.sum().item() for a in torch.split(reg.attention, reg.attention_sizes.tolist())]
    assert sums == pytest.approx([1.0] * 4, rel=1e-5)  # a softmax per layer
    state = method.state_dict()
    assert set(state) == {"delta/attention", "delta/attention_sizes"}
    other = build_method(method.cfg, make_task())
    other.load_state_dict(state)
    assert torch.equal(other.regularizers[0].attention, reg.attention)


# ----------------------------------------------------------------------------- each new method, each backbone family
#: each new method's loss terms beside ce_target
NEW_TERMS = {"l2sp": ["l2sp_backbone", "l2sp_head"], "bss": ["bss"], "delta": ["delta_backbone", "delta_head"],
             "stochnorm": [], "lwf": ["lwf"], "bi_tuning": ["bi_tuning_z", "bi_tuning_y"]}


@pytest.mark.parametrize("arch", ["smallcnn", "resnet18", "tf_efficientnet_lite0"])
@pytest.mark.parametrize("method_name", list(NEW_TERMS))
def test_each_new_method_trains_on_each_backbone_family(method_name, arch, backbones):
    backbone = copy.deepcopy(backbones[arch])
    head = backbone.pretrained_head
    model = JointClassifier(backbone, head.out_features if head is not None else KS, KT, source_head=head)
    cfg = Config(method=method_name, arch=arch, **{**QUICK, "delta_attention_batch_size": 1, "bi_tuning_k": 2})
    method = build_method(cfg, make_task(source=False))
    if method_name == "lwf" and head is None:  # LwF distils a pretrained classifier: tf_efficientnet_lite0 only
        with pytest.raises(UserError, match=f"-a {arch}: LwF distils the pretrained classifier"):
            method.prepare_model(model)
        return
    method.prepare_model(model)
    method.setup(make_ctx(model, chans=3, size=16))  # DELTA: one filter-importance pass per channel group
    optimizer, _ = build_optimizer(cfg, model, method)
    before = model.target_head.weight.detach().clone()
    terms = method.losses(model, batch(chans=3, size=16, source=False), 0.0)
    assert set(terms) == {"ce_target", *NEW_TERMS[method_name]}
    assert bool(stochnorm_layers(model.backbone)) is (method_name == "stochnorm")
    assert all(torch.isfinite(t) for t in terms.values())
    optimizer.zero_grad()
    sum(terms.values()).backward()
    optimizer.step()
    assert not torch.equal(model.target_head.weight, before)


def test_list_methods_holds_tllibs_family_beside_jtln(capsys):
    assert main(["list", "methods"]) == 0
    listed = set(capsys.readouterr().out.split())
    assert listed >= {"erm", "consecutive", "joint", "co_tuning", "jtln", "l2sp", "delta", "bss", "stochnorm", "lwf",
                      "bi_tuning"}
    assert listed == set(METHODS.names())


def test_stochnorm_swaps_the_backbones_batchnorm_and_is_refused_without_any(backbones):
    method, model = prepared("jtln", regularizers=["stochnorm"], stochnorm_p=0.25)
    layers = stochnorm_layers(model)
    assert len(layers) == 4 and all(name.startswith("backbone.") and m.p == 0.25 for name, m in layers)
    assert method.switches()["stochnorm_p"] == 0.25
    alexnet = JointClassifier(create_backbone("alexnet", pretrained=False, image_size=64), KS, KT)
    with pytest.raises(UserError, match="-a alexnet: StochNorm replaces BatchNorm layers and this backbone has none"):
        build_method(Config(method="stochnorm", arch="alexnet"), make_task(source=False)).prepare_model(alexnet)


def pretrained_lite0(backbones) -> JointClassifier:
    """tf_efficientnet_lite0 with its ImageNet classifier as the source head (source-free), as build_model makes it."""
    backbone = copy.deepcopy(backbones["tf_efficientnet_lite0"])
    head = backbone.pretrained_head
    return JointClassifier(backbone, head.out_features, KT, source_head=head, source_head_lr=0.0)


def test_lwf_distils_the_frozen_starting_classifier_on_the_target_images(backbones):
    model = pretrained_lite0(backbones)
    method = build_method(Config(method="lwf", lwf_temperature=2.0), make_task(source=False))
    method.prepare_model(model)
    model.eval()  # BatchNorm as the teacher's: at the starting weights student and teacher agree
    b = batch(chans=3, size=16, source=False)
    assert method.losses(model, b, 0.0)["lwf"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        teacher = model.source_head(model.backbone(b.x_t))
        for p in model.backbone.parameters():
            p.mul_(1.05)
    terms = method.losses(model, b, 0.0)
    student = model(b.x_t)[0].detach()
    t, s = torch.softmax(teacher / 2, 1), torch.log_softmax(student / 2, 1)
    expected = 4.0 * float((t * (t.log() - s)).sum(1).mean())  # trade-off 4 (TLlib's), KL at T = 2, no T^2
    assert terms["lwf"].item() == pytest.approx(expected, rel=1e-4) and expected > 0
    terms["lwf"].backward()
    assert model.source_head.weight.grad is None  # the classifier stays as it was (TLlib's lwf.py)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_lwf_needs_the_pretrained_classifier_as_the_source_head():
    model = smallcnn_model()  # a new source head for the source data's classes
    with pytest.raises(UserError, match="-a smallcnn: LwF distils the pretrained classifier and this backbone has none"):
        build_method(Config(method="lwf", arch="smallcnn"), make_task(source=True)).prepare_model(model)
    model.backbone.__dict__["pretrained_head"] = nn.Linear(model.features_dim, 7)  # pretrained, yet not the source head
    with pytest.raises(UserError, match="run it source-free: drop --source-data"):
        build_method(Config(method="jtln", regularizers=["lwf"]), make_task(source=True)).prepare_model(model)


def test_key_view_is_a_crop_and_flip_of_each_image():
    from tllib_jtln.methods.bi_tuning import key_view

    x = torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    whole = key_view(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the whole image, flipped or not
    flipped = [bool(torch.allclose(w, xi.flip(-1), atol=1e-5)) for w, xi in zip(whole, x)]
    assert all(f or torch.allclose(w, xi, atol=1e-5) for f, w, xi in zip(flipped, whole, x))
    assert 0 < sum(flipped) < 6
    ramp = torch.arange(8.0).expand(1, 1, 8, 8).repeat(4, 1, 1, 1)  # x = column index
    crops = key_view(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0))  # half the side, one quarter of the area
    widths = (crops[:, 0, :, -1] - crops[:, 0, :, 0]).abs()
    assert crops.shape == ramp.shape and torch.allclose(widths, torch.full_like(widths, 3.5), atol=1e-4)


def test_bi_tuning_projects_in_the_one_forward_and_moves_the_key_encoder_by_momentum():
    method, model = prepared("bi_tuning", bi_tuning_k=3, bi_tuning_projection_dim=6, bi_tuning_momentum=0.9)
    assert not model.target_head.bias.any() and model.target_head.weight.std() < 0.02  # TLlib's head: N(0, 0.01)
    b = batch(source=False)
    out = model(b.x_t, with_features=True)
    assert out.projection.shape == (4, 6) and out.rows(slice(1, None)).projection.shape == (3, 6)
    optimizer, _ = build_optimizer(Config(method="bi_tuning", finetune=True), model, method)
    groups = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert groups["projector"] == groups["backbone"] == pytest.approx(0.1 * groups["target_head"])
    terms = method.losses(model, b, 0.0)
    assert set(terms) == {"ce_target", "bi_tuning_z", "bi_tuning_y"}
    assert method.switches() == {"bi_tuning_k": 3, "bi_tuning_momentum": 0.9, "bi_tuning_temperature": 0.07,
                                 "bi_tuning_projection_dim": 6, "bi_tuning_trade_off": 1.0}
    start = [p.detach().clone() for p in model.key_encoder.parameters()]
    assert all(torch.allclose(k, q) for k, q in zip(start, method.query.parameters()))  # the first update: a copy
    optimizer.zero_grad()
    sum(terms.values()).backward()
    optimizer.step()
    method.losses(model, b, 0.0)
    for key, old, query in zip(model.key_encoder.parameters(), start, method.query.parameters()):
        torch.testing.assert_close(key, 0.9 * old + 0.1 * query.detach())
    assert model.projector is method.query.projector and not any(p.requires_grad for p in model.key_encoder.parameters())


def test_bi_tuning_queues_are_its_state():
    method, model = prepared("bi_tuning", bi_tuning_k=3, bi_tuning_projection_dim=6)
    method.losses(model, batch(source=False), 0.0)  # labels 0, 1, 2, 0 queued
    state = method.state_dict()
    assert set(state) == {"loss.queue_h.keys", "loss.queue_h.ptr", "loss.queue_z.keys", "loss.queue_z.ptr"}
    assert state["loss.queue_z.ptr"].tolist() == [2, 1, 1]
    assert state["loss.queue_z.keys"].shape == (KT, 3, 6)
    other, _ = prepared("bi_tuning", bi_tuning_k=3, bi_tuning_projection_dim=6)
    planted = {**state, "loss.queue_z.ptr": torch.tensor([1, 2, 0])}
    other.load_state_dict(planted)
    assert torch.equal(other.loss.queue_z.ptr, planted["loss.queue_z.ptr"])
    assert torch.equal(other.loss.queue_h.keys, state["loss.queue_h.keys"])
    assert dict(other.loss.named_buffers())["queue_z.ptr"] is other.loss.queue_z.ptr  # still the module's buffer


# ----------------------------------------------------------------------------- settings: --with, knobs, refusals
def test_with_is_a_comma_list_on_the_command_line_and_a_list_or_with_key_in_yaml(tmp_path):
    args = build_parser().parse_args(["train", "--method", "jtln", "--with", "bss,l2sp"])
    assert args.regularizers == ["bss", "l2sp"]
    for text in ("with: [bss, l2sp]\n", "regularizers: bss,l2sp\n", "regularizers:\n  - bss\n  - l2sp\n"):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        assert resolve_config({"config": str(path), "method": "jtln"}).regularizers == ["bss", "l2sp"]


@pytest.mark.parametrize("given,needle", [
    ({"method": "co_tuning", "regularizers": ["bss"]}, "--method co_tuning does not take TLlib regularisers"),
    ({"method": "consecutive", "regularizers": ["l2sp"]}, "--method consecutive does not take"),
    ({"method": "bss", "regularizers": ["bss"]}, "bss --method bss has it already"),
    ({"method": "jtln", "regularizers": ["bss", "bss"]}, "bss named twice"),
    ({"method": "jtln", "regularizers": ["l2sp", "delta"]}, "l2sp and delta both penalise"),
    ({"method": "delta", "regularizers": ["l2sp"]}, "delta and l2sp both penalise"),
    ({"method": "jtln", "regularizers": ["bsss"]}, "unknown regularizer 'bsss'; did you mean 'bss'"),
    ({"method": "erm", "bss_k": 2}, "--bss-k is a knob of the bss regulariser"),
    ({"method": "jtln", "trade_off_head": 0.1}, "--trade-off-head is a knob of the delta regulariser"),
    ({"method": "jtln", "regularizers": ["bss"], "source_stage": True}, "--with bss and --source-stage"),
    ({"method": "bss", "trade_off": 0.1, "bss_trade_off": 0.2}, "both set bss's weight"),
    ({"method": "lwf", "trade_off": 1.0, "lwf_trade_off": 2.0}, "both set lwf's weight"),
    ({"method": "stochnorm", "trade_off": 1.0}, "--method stochnorm has none"),
    ({"method": "stochnorm", "freeze_bn": True}, "--freeze-bn keeps BatchNorm in eval mode"),
    ({"method": "jtln", "regularizers": ["stochnorm"], "freeze_bn": True}, "--freeze-bn keeps BatchNorm in eval"),
    ({"method": "bi_tuning", "regularizers": ["bss"]}, "--method bi_tuning does not take TLlib regularisers"),
    ({"method": "erm", "bi_tuning_k": 3}, "--bi-tuning-k is a knob of --method bi_tuning, not of --method erm"),
    ({"method": "jtln", "lwf_temperature": 2.0}, "--lwf-temperature is a knob of the lwf regulariser"),
    ({"method": "erm", "stochnorm_p": 0.3}, "--stochnorm-p is a knob of the stochnorm regulariser"),
])
def test_a_regulariser_that_does_not_fit_is_refused_in_one_line(given, needle):
    with pytest.raises(UserError, match=needle):
        cfg = resolve_config(dict(given))
        build_method(cfg, make_task())


def test_trade_off_is_bss_weight_and_knobs_of_the_runs_regularisers_are_accepted():
    assert resolve_config({"method": "bss", "trade_off": 0.01}).bss_trade_off == 0.01
    assert resolve_config({"method": "lwf", "trade_off": 2.0}).lwf_trade_off == 2.0
    assert resolve_config({"method": "bi_tuning", "trade_off": 0.5}).bi_tuning_trade_off == 0.5
    assert resolve_config({"method": "bi_tuning", "bi_tuning_k": 8}).bi_tuning_k == 8
    assert resolve_config({"method": "jtln", "regularizers": ["stochnorm"], "stochnorm_p": 0.3}).stochnorm_p == 0.3
    assert resolve_config({"method": "jtln", "regularizers": ["delta"], "trade_off_head": 0.1}).trade_off_head == 0.1
    assert resolve_config({"method": "l2sp", "trade_off_backbone": 0.1}).trade_off_backbone == 0.1
    assert REGULARIZERS.names() == ["bss", "delta", "l2sp", "lwf", "stochnorm"]


# ----------------------------------------------------------------------------- runs
def embedded_flags(log, method: str, arch: str, **extra) -> dict:
    """A seconds-long run on the embedded Fashion-MNIST task: 1 epoch of 2 steps of 4 images, no test pass;
    ``arch`` is the offline pretrained tf_efficientnet_lite0 or a from-scratch timm ResNet at 32 px."""
    pretrained = arch == "tf_efficientnet_lite0"
    return {"method": method, "arch": arch, "pretrained": pretrained, "image_size": None if pretrained else 32,
            "num_samples_per_class": 2, "val_per_class": 2, "epochs": 1, "iters_per_epoch": 2, "batch_size": 4,
            "source_batch_size": 4, "lr_decay_epochs": [1], "workers": 0, "skip_test": True, "progress": False,
            "log": str(log), "device": "cpu", **SMALL_KNOBS.get(method, {}), **extra}


#: a method's own knobs at a small scale (given only to that method: a knob of another is refused)
SMALL_KNOBS = {"delta": {"delta_attention_iters": 1, "delta_attention_batch_size": 4}, "bi_tuning": {"bi_tuning_k": 2}}


def logged_terms(log) -> dict:
    return json.loads((log / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("method_name,arch", [(m, a) for m in ("stochnorm", "lwf", "bi_tuning")
                                              for a in ("tf_efficientnet_lite0", "resnet18")
                                              if not (m == "lwf" and a == "resnet18")])  # lwf: a pretrained head
def test_each_new_method_runs_on_the_embedded_task(method_name, arch, tmp_path):
    """(l2sp, bss and delta: the step on each backbone family above, and with jtln below.)"""
    extra = {"source_data": "none"} if method_name == "lwf" else {}  # source-free: the ImageNet head is the source head
    assert train_from_flags(embedded_flags(tmp_path, method_name, arch, **extra)) == 0
    record = logged_terms(tmp_path)
    assert all(np.isfinite(record[f"train_{t}"]) for t in ["ce_target", *NEW_TERMS[method_name]])


@pytest.mark.parametrize("name", ["bss", "l2sp", "delta", "stochnorm"])
def test_a_jtln_run_with_each_regulariser_logs_its_terms(name, data_root, tmp_path):
    log = tmp_path / name
    assert train_from_flags(tiny_flags(data_root, log, method="jtln", regularizers=[name], epochs=1,
                                       lr_decay_epochs=[1], **({"delta_attention_iters": 1} if name == "delta" else {})
                                       )) == 0
    record = logged_terms(log)
    assert all(np.isfinite(record[f"train_{t}"]) for t in NEW_TERMS[name]) and np.isfinite(record["train_ot"])
    summary = json.loads((log / "summary.json").read_text())
    assert summary["switches"]["regularizers"] == [name]


def test_a_source_free_jtln_run_with_lwf_distils_the_imagenet_head(tmp_path):
    flags = embedded_flags(tmp_path, "jtln", "tf_efficientnet_lite0", source_data="none", cost="source-head",
                           regularizers=["lwf"])
    assert train_from_flags(flags) == 0
    record = logged_terms(tmp_path)
    assert np.isfinite(record["train_lwf"]) and record["train_lwf"] > 0 and np.isfinite(record["train_ot"])
    switches = json.loads((tmp_path / "summary.json").read_text())["switches"]
    assert (switches["lwf_temperature"], switches["lwf_trade_off"], switches["source_free"]) == (3.0, 4.0, True)


def test_co_tuning_relationship_file_is_written_once_and_read_back(tmp_path):
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1, image_size=SIZE)
    model = JointClassifier(backbone, KS, KT, source_head=nn.Linear(backbone.out_features, KS))  # "pretrained"
    ctx = make_ctx(model)
    ctx.log_dir = tmp_path
    cfg = Config(method="co_tuning", relationship="relationship.npy")  # relative: under the log folder
    first = build_method(cfg, make_task(source=False))
    first.prepare_model(model)
    first.setup(ctx)
    written = load_relationship(tmp_path / "relationship.npy", (KT, KS))
    torch.testing.assert_close(written, first.relation)
    planted = np.full((KT, KS), 0.05, dtype=np.float32)
    planted[:, 2] = 0.8
    np.save(tmp_path / "relationship.npy", planted)
    second = build_method(cfg, make_task(source=False))
    second.setup(ctx)
    assert torch.equal(second.relation, torch.from_numpy(planted))  # read, not computed
    np.save(tmp_path / "relationship.npy", planted[:2])
    with pytest.raises(UserError, match="expected finite non-negative floats of shape \\(3, 5\\)"):
        build_method(cfg, make_task(source=False)).setup(ctx)
    with pytest.raises(UserError, match="--relationship relationship.npy: with source data"):
        build_method(cfg, make_task(source=True))


#: a tiny run of every method, and of the variants whose stages differ (lwf: source-free, pretrained head)
IDLE_RUNS = {**{name: {"method": name, **SMALL_KNOBS.get(name, {})} for name in METHODS.names()},
             "lwf": {"method": "lwf", "arch": "tf_efficientnet_lite0", "pretrained": True, "source_data": None,
                     "source_root": None},
             "jtln --source-stage": {"method": "jtln", "source_stage": True, "ot_on": "target"},
             "jtln --ot-weight 0": {"method": "jtln", "ot_weight": 0.0}}


@pytest.mark.parametrize("run", IDLE_RUNS)
def test_a_stage_leaves_parameters_without_gradient_exactly_when_it_says_so(run, data_root, tmp_path, monkeypatch):
    """``Stage.idle_parameters`` decides whether DDP searches each step for parameters without a gradient
    (a wrong False stops a DDP run at its second step): in such a stage every step leaves the same trainable
    parameters without one; in any other, every trainable parameter gets one at every step."""
    from tllib_jtln.engine import epoch as epoch_module, trainer as trainer_module

    built, idle = [], []
    real_assemble, real_descend = trainer_module.assemble, epoch_module.descend

    def assemble(*args, **kwargs):
        built.append(real_assemble(*args, **kwargs))
        return built[-1]

    def descend(loss, optimizer, scaler=None):
        real_descend(loss, optimizer, scaler)
        idle.append({n for n, p in built[-1].model.named_parameters() if p.requires_grad and p.grad is None})

    monkeypatch.setattr(trainer_module, "assemble", assemble)
    monkeypatch.setattr(epoch_module, "descend", descend)
    train(resolve_config(tiny_flags(data_root, tmp_path / "run", epochs=1, iters_per_epoch=2, lr_decay_epochs=[1],
                                    **IDLE_RUNS[run])))
    stages = built[-1].method.stages()
    assert len(idle) == 2 * len(stages)
    for stage, first, second in zip(stages, idle[::2], idle[1::2]):
        assert first == second and bool(first) == stage.idle_parameters, (stage, first, second)


def _uninterrupted_and_resumed(data_root, tmp_path, **flags) -> tuple[dict, dict]:
    """``last.pt`` of a 2-epoch run, and of the same run stopped after epoch 1 and resumed."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    common = dict(epochs=2, lr_decay_epochs=[1], **flags)
    train(resolve_config(tiny_flags(data_root, once, **common)))
    train(resolve_config(tiny_flags(data_root, twice, **common)), stop_after_epoch=1)
    assert train_from_flags({"resume": True, "log": str(twice), "progress": False}) == 0
    return tuple(torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in (once, twice))


def test_a_resumed_bi_tuning_run_ends_as_the_uninterrupted_one(data_root, tmp_path):
    """The projector and the key encoder come back with the model, the queues with the method's state."""
    a, b = _uninterrupted_and_resumed(data_root, tmp_path, method="bi_tuning", bi_tuning_k=2)
    assert any(k.startswith("key_encoder.") for k in a["model"]) and any(k.startswith("projector.") for k in a["model"])
    assert all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())
    assert set(a["method"]) == {"loss.queue_h.keys", "loss.queue_h.ptr", "loss.queue_z.keys", "loss.queue_z.ptr"}
    assert all(torch.equal(t, b["method"][k]) for k, t in a["method"].items())


def test_a_resumed_run_keeps_the_starting_point_and_the_attention(data_root, tmp_path):
    """On resume the starting weights come from the fresh model (before the checkpoint is loaded) and
    DELTA's attention from the checkpoint: the resumed run ends with the weights of the uninterrupted one."""
    a, b = _uninterrupted_and_resumed(data_root, tmp_path, method="delta", delta_attention_iters=1)
    assert all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())
    assert a["method"].keys() == b["method"].keys()
    assert all(torch.equal(t, b["method"][k]) for k, t in a["method"].items())
