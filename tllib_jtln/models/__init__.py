"""Backbones (timm, torchvision ``alexnet``, ``smallcnn``) and the two-head joint classifier.

Imports nothing from :mod:`tllib_jtln.methods`, the engine or the command line, so a TLlib
script can use it directly::

    from tllib_jtln.models import create_backbone, JointClassifier
    backbone = create_backbone("resnet50", pretrained=True)
    model = JointClassifier(backbone, 1000, 200, source_head=backbone.pretrained_head)
    source_logits, target_logits = model(images)
"""
from .backbones import (AlexNetBackbone, Backbone, TimmBackbone, create_backbone, imagenet_class_names,
                        list_archs, load_weights_file)
from .classifier import JointClassifier, build_model
from .efficientnet_lite0 import lite0_weights_path
from .memory_format import apply_memory_format
from .smallcnn import SmallCNN

__all__ = ["Backbone", "TimmBackbone", "AlexNetBackbone", "SmallCNN", "create_backbone", "list_archs",
           "load_weights_file", "imagenet_class_names", "JointClassifier", "build_model", "lite0_weights_path",
           "apply_memory_format"]
