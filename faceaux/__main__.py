"""``python -m faceaux``: the same entry point as the ``faceaux`` console script."""

from faceaux.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
