"""faceaux: drop-in face-recognition layers for PyTorch.

Each layer carries one kind of face knowledge (landmarks, alignment, parts, attributes,
norm-aware pooling) into any recognition network, next to the margin heads they train with.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

# Public names, one block per layer family: `from faceaux.<module> import ...` then
# `__all__ += [...]` with the same names.
