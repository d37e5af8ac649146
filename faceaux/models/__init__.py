"""Reference networks: backbones, the FAN landmark network, the composable recognizer and the
papers' models (registered by name; see :func:`faceaux.models.list_models`)."""

from faceaux.models.adapter import BackboneAdapter as BackboneAdapter
from faceaux.models.embedding_head import EmbeddingHead as EmbeddingHead
from faceaux.models.features import StagedBackbone as StagedBackbone
from faceaux.models.hourglass import FAN as FAN
from faceaux.models.hourglass import ConvBlock as ConvBlock
from faceaux.models.hourglass import HourGlass as HourGlass
from faceaux.models.hourglass import StackedHourGlass as StackedHourGlass
from faceaux.models.hourglass import (
    load_face_alignment_checkpoint as load_face_alignment_checkpoint,
)
from faceaux.models.recognizer import FaceRecognizer as FaceRecognizer
from faceaux.models.registry import create_model as create_model
from faceaux.models.registry import get_model_cfg as get_model_cfg
from faceaux.models.registry import list_models as list_models
from faceaux.models.registry import load_checkpoint as load_checkpoint
from faceaux.models.registry import register_model as register_model
