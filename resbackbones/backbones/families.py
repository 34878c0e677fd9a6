"""Imports every backbone family so that its builders register themselves."""
# Each helper adds its family module here.
from . import resnet  # noqa: F401,E402
from . import vgg  # noqa: F401,E402
from . import cifar  # noqa: F401,E402
