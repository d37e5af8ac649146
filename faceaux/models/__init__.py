"""Reference networks: backbones, the FAN landmark network, and the papers' models."""

from faceaux.models.hourglass import FAN as FAN
from faceaux.models.hourglass import ConvBlock as ConvBlock
from faceaux.models.hourglass import HourGlass as HourGlass
from faceaux.models.hourglass import StackedHourGlass as StackedHourGlass
from faceaux.models.hourglass import (
    load_face_alignment_checkpoint as load_face_alignment_checkpoint,
)
from faceaux.models.registry import create_model as create_model
from faceaux.models.registry import list_models as list_models
from faceaux.models.registry import load_checkpoint as load_checkpoint
from faceaux.models.registry import register_model as register_model
