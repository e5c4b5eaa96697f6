"""Backbones (timm, torchvision ``alexnet``, ``smallcnn``) and the two-head joint classifier.

Imports nothing from :mod:`tllib_jtln.methods`, the engine or the command line, so a TLlib
script can use it directly::

    from tllib_jtln.models import create_backbone, JointClassifier
    backbone = create_backbone("resnet50", pretrained=True)
    model = JointClassifier(backbone, 1000, 200, source_head=backbone.pretrained_head)
    source_logits, target_logits = model(images)

:data:`ARCHS` is the table of architectures built here (``tllib-jtln list archs`` adds timm's).
"""
from .alexnet import AlexNetBackbone
from .backbones import TimmBackbone, create_backbone, list_archs
from .base import ARCHS, Backbone, register_arch
from .classifier import JointClassifier, build_model
from .efficientnet_lite0 import lite0_weights_path
from .memory_format import apply_memory_format
from .smallcnn import SmallCNN
from .weights import imagenet_class_names, load_weights_file

__all__ = ["ARCHS", "Backbone", "TimmBackbone", "AlexNetBackbone", "SmallCNN", "create_backbone", "list_archs",
           "load_weights_file", "imagenet_class_names", "register_arch", "JointClassifier", "build_model",
           "lite0_weights_path", "apply_memory_format"]
