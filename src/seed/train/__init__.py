"""The train stage: a student trained on records with a plain PyTorch loop."""
