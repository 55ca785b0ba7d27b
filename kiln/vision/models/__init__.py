"""`torchvision.models` for kiln: the classification model zoo with torchvision's module names
(state_dict keys and shapes match torchvision's), its `*_Weights` enums and registry, and
loading of torchvision's pretrained files through kiln.hub's cache."""

from kiln.vision.models._weights import (Weights, WeightsEnum, get_model, get_model_builder,
                                         get_model_weights, get_weight, list_models)
from kiln.vision.models.alexnet import AlexNet, AlexNet_Weights, alexnet
from kiln.vision.models.densenet import (DenseNet, DenseNet121_Weights, DenseNet161_Weights,
                                         DenseNet169_Weights, DenseNet201_Weights, densenet121,
                                         densenet161, densenet169, densenet201)
from kiln.vision.models.efficientnet import (EfficientNet, EfficientNet_B0_Weights,
                                             EfficientNet_B1_Weights, EfficientNet_B2_Weights,
                                             EfficientNet_B3_Weights, efficientnet_b0,
                                             efficientnet_b1, efficientnet_b2, efficientnet_b3)
from kiln.vision.models.googlenet import (GoogLeNet, GoogLeNet_Weights, GoogLeNetOutputs,
                                          googlenet)
from kiln.vision.models.inception import (Inception3, Inception_V3_Weights, InceptionOutputs,
                                          inception_v3)
from kiln.vision.models.mobilenetv2 import MobileNet_V2_Weights, MobileNetV2, mobilenet_v2
from kiln.vision.models.mobilenetv3 import (MobileNet_V3_Large_Weights,
                                            MobileNet_V3_Small_Weights, MobileNetV3,
                                            mobilenet_v3_large, mobilenet_v3_small)
from kiln.vision.models.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18_Weights,
                                       ResNet34_Weights, ResNet50_Weights, ResNet101_Weights,
                                       ResNet152_Weights, ResNeXt50_32X4D_Weights,
                                       ResNeXt101_32X8D_Weights, ResNeXt101_64X4D_Weights,
                                       Wide_ResNet50_2_Weights, Wide_ResNet101_2_Weights,
                                       resnet18, resnet34, resnet50, resnet101, resnet152,
                                       resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
                                       wide_resnet50_2, wide_resnet101_2)
from kiln.vision.models.shufflenetv2 import (ShuffleNet_V2_X0_5_Weights,
                                             ShuffleNet_V2_X1_0_Weights,
                                             ShuffleNet_V2_X1_5_Weights,
                                             ShuffleNet_V2_X2_0_Weights, ShuffleNetV2,
                                             shufflenet_v2_x0_5, shufflenet_v2_x1_0,
                                             shufflenet_v2_x1_5, shufflenet_v2_x2_0)
from kiln.vision.models.squeezenet import (SqueezeNet, SqueezeNet1_0_Weights,
                                           SqueezeNet1_1_Weights, squeezenet1_0, squeezenet1_1)
from kiln.vision.models.vgg import (VGG, VGG11_BN_Weights, VGG11_Weights, VGG13_BN_Weights,
                                    VGG13_Weights, VGG16_BN_Weights, VGG16_Weights,
                                    VGG19_BN_Weights, VGG19_Weights, vgg11, vgg11_bn, vgg13,
                                    vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)

__all__ = ["AlexNet", "AlexNet_Weights", "BasicBlock", "Bottleneck", "DenseNet",
           "DenseNet121_Weights", "DenseNet161_Weights", "DenseNet169_Weights",
           "DenseNet201_Weights", "EfficientNet", "EfficientNet_B0_Weights",
           "EfficientNet_B1_Weights", "EfficientNet_B2_Weights", "EfficientNet_B3_Weights",
           "GoogLeNet", "GoogLeNet_Weights", "GoogLeNetOutputs", "googlenet", "Inception3",
           "Inception_V3_Weights", "InceptionOutputs", "inception_v3",
           "MobileNetV2", "MobileNetV3", "MobileNet_V2_Weights", "MobileNet_V3_Large_Weights",
           "MobileNet_V3_Small_Weights", "ResNeXt101_32X8D_Weights", "ResNeXt101_64X4D_Weights",
           "ResNeXt50_32X4D_Weights", "ResNet", "ResNet101_Weights", "ResNet152_Weights",
           "ResNet18_Weights", "ResNet34_Weights", "ResNet50_Weights", "ShuffleNetV2",
           "ShuffleNet_V2_X0_5_Weights", "ShuffleNet_V2_X1_0_Weights",
           "ShuffleNet_V2_X1_5_Weights", "ShuffleNet_V2_X2_0_Weights", "SqueezeNet",
           "SqueezeNet1_0_Weights", "SqueezeNet1_1_Weights", "VGG", "VGG11_BN_Weights",
           "VGG11_Weights", "VGG13_BN_Weights", "VGG13_Weights", "VGG16_BN_Weights",
           "VGG16_Weights", "VGG19_BN_Weights", "VGG19_Weights", "Weights", "WeightsEnum",
           "Wide_ResNet101_2_Weights", "Wide_ResNet50_2_Weights", "alexnet", "densenet121",
           "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1",
           "efficientnet_b2", "efficientnet_b3", "get_model", "get_model_builder",
           "get_model_weights", "get_weight", "list_models", "mobilenet_v2", "mobilenet_v3_large",
           "mobilenet_v3_small", "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
           "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d", "shufflenet_v2_x0_5",
           "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0",
           "squeezenet1_1", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
           "vgg19_bn", "wide_resnet101_2", "wide_resnet50_2"]
