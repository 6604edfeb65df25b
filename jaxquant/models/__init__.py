"""Model zoo: every model takes ``(x, precision, train)`` and is built for a ``bits`` tuple."""

from jaxquant.models.cnn import SmallCNN
from jaxquant.models.mobilenet import MobileNetV2
from jaxquant.models.multibranch import MultiBranchCifarResNet, MultiBranchCNN, MultiBranchResNet
from jaxquant.models.multibranch_bottleneck import MultiBranchBottleneckResNet
from jaxquant.models.multibranch_mobilenet import MultiBranchMobileNetV1
from jaxquant.models.resnet import ResNet, ResNet18, ResNet34
from jaxquant.models.resnet_cifar import CifarResNet

__all__ = [
    "SmallCNN",
    "CifarResNet",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "MultiBranchCNN",
    "MultiBranchCifarResNet",
    "MultiBranchResNet",
    "MultiBranchBottleneckResNet",
    "MultiBranchMobileNetV1",
    "MobileNetV2",
]
