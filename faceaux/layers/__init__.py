"""Drop-in layers, one file per paper's layer family."""
