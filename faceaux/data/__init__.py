"""Datasets: the embedded synthetic face set, InsightFace verification files, image folders."""
