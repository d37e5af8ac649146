"""What the docs figure scripts share: where figures go and how they are saved.

The scripts import it by name (``from _figures import ...``): run them as
``python examples/doc_figures/<page>.py [out_dir]``; the tests put this folder on ``sys.path``.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def save_png(fig: plt.Figure, path: Path) -> Path:
    """Save at 80 dpi as a 256-colour palette PNG (keeps each file well under 150 KB)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path
