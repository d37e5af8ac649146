"""Margin heads (ArcFace and co.) and the sharded Partial-FC classifier."""
