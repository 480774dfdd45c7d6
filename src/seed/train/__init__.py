"""The train stage: a student trained on records with a plain PyTorch loop."""

from seed.train.loop import train_student

__all__ = ["train_student"]
