"""Datasets: the embedded synthetic face set, InsightFace verification files, image folders."""

from faceaux.data.folders import ImageFolderFaces
from faceaux.data.recordio import RecordFaces, RecordWriter, pack_folder
from faceaux.data.synthetic import (
    NUISANCE_ATTRIBUTES,
    SYNTHETIC_ATTRIBUTES,
    SyntheticFaces,
    make_pairs,
    split_identities,
)
from faceaux.data.verification_bin import load_verification_bin, save_verification_bin

__all__ = [
    "NUISANCE_ATTRIBUTES",
    "SYNTHETIC_ATTRIBUTES",
    "ImageFolderFaces",
    "RecordFaces",
    "RecordWriter",
    "SyntheticFaces",
    "load_verification_bin",
    "make_pairs",
    "pack_folder",
    "save_verification_bin",
    "split_identities",
]
