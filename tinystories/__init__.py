"""Pretrain small LLaMA models on TinyStories with PyTorch Lightning (Eldan & Li, 2023)."""


class InputError(ValueError):
    """Bad input from the user (a file, a folder, an option); `python -m tinystories` prints it as one line."""
