"""Protecting a served model from unseen distillation: watermarking its output, detecting it."""
