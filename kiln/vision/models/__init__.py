"""`torchvision.models` for kiln: ResNet and AlexNet with torchvision's module names
(state_dict keys and shapes match torchvision's); architectures only, no pretrained weights."""

from kiln.vision.models.alexnet import AlexNet, AlexNet_Weights, alexnet
from kiln.vision.models.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18_Weights,
                                       ResNet34_Weights, ResNet50_Weights, ResNet101_Weights,
                                       ResNet152_Weights, resnet18, resnet34, resnet50,
                                       resnet101, resnet152)

__all__ = ["AlexNet", "AlexNet_Weights", "alexnet", "BasicBlock", "Bottleneck", "ResNet",
           "ResNet18_Weights", "ResNet34_Weights", "ResNet50_Weights", "ResNet101_Weights",
           "ResNet152_Weights", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
