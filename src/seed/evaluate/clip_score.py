"""CLIP score: how well images match their captions, by a CLIP model from a local directory.

The score is 100 x the cosine of the image and caption embeddings, floored at 0 and averaged
(Hessel et al. 2021, as torchmetrics computes it). The weights are read from the directory the
recipe names (`eval.images.clip_model`), never downloaded; with none given the metric is skipped.
The number depends on the CLIP model: compare students under the same one only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from seed.errors import UserError


def clip_score(model_dir: Path, images: list[Image.Image], captions: list[str],
               batch_size: int = 32) -> float | None:
    """The mean CLIP score of `images` against `captions` (paired in order); None for none."""
    from transformers import CLIPModel, CLIPProcessor

    if not images:
        return None
    try:
        model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    except OSError as e:
        raise UserError(f"eval.images.clip_model: {model_dir}: not a CLIP model directory "
                        f"with its processor ({e}); give a local CLIP checkpoint") from None
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start:start + batch_size]]
            inputs = processor(text=captions[start:start + batch_size], images=batch,
                               return_tensors="pt", padding=True)
            out = model(**inputs)
            img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            scores.append((100 * (img * txt).sum(-1)).clamp(min=0))
    return float(torch.cat(scores).mean())
