"""Pretrain small LLaMA models on TinyStories with PyTorch Lightning (Eldan & Li, 2023)."""
