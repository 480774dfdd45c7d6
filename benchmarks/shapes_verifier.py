"""How exact the shapes verifier is: teacher images, swapped captions, noise, and noisy teachers.

Draws `--n` teacher images per canvas size (16, 24, 32) over two sampling seeds and prints one
RESULT line per size:

    RESULT size=32 teacher_accepted=1.0 swapped_rejected=1.0 colours_swapped_rejected=1.0
           noise_accepted=0.0 blank_accepted=0.0 sigma10=1.0 sigma20=1.0 sigma30=0.96 ...

`sigmaS` is the share of teacher images still read exactly after Gaussian noise of standard
deviation S (of 255) is added to every channel, `blurR` after a Gaussian blur of radius R px: how
noisy or soft a student's sample may be before the verifier stops reading it. Measured
2026-12-02 on a 2-core CPU at load ~8 (about 3.5 CPU-minutes at --n 2000, 7 minutes of wall):

    --n 2000: every size teacher_accepted=1.0 swapped_rejected=1.0 colours_swapped_rejected=1.0
              noise_accepted=0.0 blank_accepted=0.0 sigma10=sigma20=sigma30=1.0
              sigma40 0.996 / 1.0 / 1.0, sigma50 0.967 / 0.974 / 0.991,
              sigma60 0.868 / 0.886 / 0.918 (16 / 24 / 32 px)
    --n 600:  blur0.5=blur0.7=1.0, blur1.0 0.67 / 0.853 / 0.995 (16 / 24 / 32 px)

    .venv/bin/python benchmarks/shapes_verifier.py --n 2000
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageFilter

from seed.endpoints.shapes import Shapes
from seed.recipe import ShapesConfig

SIGMAS = (10, 20, 30, 40, 50, 60)
BLURS = (0.5, 0.7, 1.0)


def _noisy(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, np.float32) + rng.normal(0, sigma, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def measure(size: int, n: int) -> dict[str, float]:
    shapes = Shapes(ShapesConfig(size=size))
    rng = np.random.default_rng(size)
    specs = [s for seed in (0, 1) for s in shapes.specs("all", n // 2, seed=seed)]
    accepted = swapped = swaps = colours = colour_swaps = noise = 0
    noisy = dict.fromkeys(SIGMAS, 0)
    blurred = dict.fromkeys(BLURS, 0)
    for spec in specs:
        image, left, right = shapes.draw(spec), spec["left"], spec["right"]
        caption = shapes.caption(spec)
        accepted += shapes.verify(image, caption).exact
        if (left["color"], left["shape"]) != (right["color"], right["shape"]):
            swaps += 1
            swapped += not shapes.verify(image, f"{right['color']} {right['shape']} left of "
                                                f"{left['color']} {left['shape']}").exact
        if left["color"] != right["color"]:
            colour_swaps += 1
            colours += not shapes.verify(image, f"{right['color']} {left['shape']} left of "
                                                f"{left['color']} {right['shape']}").exact
        junk = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        noise += shapes.verify(junk, caption).exact
        for sigma in SIGMAS:
            noisy[sigma] += shapes.verify(_noisy(image, sigma, rng), caption).exact
        for radius in BLURS:
            soft = image.filter(ImageFilter.GaussianBlur(radius))
            blurred[radius] += shapes.verify(soft, caption).exact
    blank = shapes.verify(Image.new("RGB", (size, size)), shapes.caption(specs[0])).exact
    out = {"images": len(specs), "teacher_accepted": accepted / len(specs),
           "swapped_rejected": swapped / max(swaps, 1),
           "colours_swapped_rejected": colours / max(colour_swaps, 1),
           "noise_accepted": noise / len(specs), "blank_accepted": float(blank)}
    out.update({f"sigma{s}": round(noisy[s] / len(specs), 3) for s in SIGMAS})
    out.update({f"blur{r}": round(blurred[r] / len(specs), 3) for r in BLURS})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per canvas size")
    args = ap.parse_args()
    for size in (16, 24, 32):
        figures = measure(size, args.n)
        print(f"RESULT size={size} " + " ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
