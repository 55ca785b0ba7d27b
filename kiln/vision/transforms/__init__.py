"""`torchvision.transforms` for kiln: image transforms on PIL images and kiln tensors."""

from kiln.vision.transforms import functional, v2
from kiln.vision.transforms.functional import InterpolationMode
from kiln.vision.transforms.transforms import (CenterCrop, ColorJitter, Compose,
                                               ConvertImageDtype, GaussianBlur, Grayscale,
                                               Lambda, Normalize, Pad, PILToTensor, RandomApply,
                                               RandomChoice, RandomCrop, RandomErasing,
                                               RandomGrayscale, RandomHorizontalFlip,
                                               RandomOrder, RandomResizedCrop, RandomRotation,
                                               RandomVerticalFlip, Resize, ToPILImage, ToTensor)

__all__ = ["functional", "v2", "InterpolationMode", "CenterCrop", "ColorJitter", "Compose",
           "ConvertImageDtype", "GaussianBlur", "Grayscale", "Lambda", "Normalize", "Pad",
           "PILToTensor", "RandomApply", "RandomChoice", "RandomCrop", "RandomErasing",
           "RandomGrayscale", "RandomHorizontalFlip", "RandomOrder", "RandomResizedCrop",
           "RandomRotation", "RandomVerticalFlip", "Resize", "ToPILImage", "ToTensor"]
