"""Drop-in layers, one file per paper's layer family.

Import them from the top level (``from faceaux import GNAP``) or from their defining module
(``faceaux.layers.gnap.GNAP``): each object has those two import paths only.
"""
