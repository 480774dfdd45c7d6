"""The shapes teacher: procedural two-object images, their captions, and an exact pixel verifier.

A caption names two objects, a colour and a shape each, one in the left half of the canvas and one
in the right: "red circle left of blue square". `Shapes.draw` renders a spec (hard edges, palette
colours, no anti-aliasing, so the teacher's pixels are exact); `Shapes.verify` reads any image of
the canvas (a student's noisy sample included) back into colours and shapes per half and compares
them with a caption. The compositions (ordered pairs of objects) are split once, seeded: a
`held_out` share is for evaluation only, chosen so that every object (so every word) still appears
in both slots in training. This module draws and checks; it writes no files and calls nothing.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from seed.errors import UserError
from seed.recipe import ShapesConfig

# Colours far apart in RGB (the closest pair, red and orange, is ~110 apart) and from both
# backgrounds a config may pick (a colour too close to its background is refused).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25), "green": (25, 200, 25), "blue": (30, 60, 230),
    "yellow": (240, 220, 20), "magenta": (220, 30, 220), "cyan": (20, 210, 230),
    "orange": (250, 130, 0), "white": (245, 245, 245), "black": (10, 10, 10),
    "gray": (128, 128, 128)}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}
SHAPES = ("circle", "square", "triangle", "diamond")

Split = Literal["train", "eval", "all"]
Obj = tuple[str, str]  # (colour, shape)
Composition = tuple[Obj, Obj]  # (left, right)
SLOTS = ("left", "right")

_CAPTION = re.compile(r"\s*([a-z]+)\s+([a-z]+)\s+left\s+of\s+([a-z]+)\s+([a-z]+)\s*\.?\s*")
_MIN_BG_DISTANCE = 150.0  # a colour this close to the background would not stand out
_MIN_IOU = 0.6  # a blob matching no shape template this well is "unclear"


@dataclass
class Verdict:
    """What the verifier read from an image, against what a caption says.

    `attributes` maps `left_color`, `left_shape`, `right_color`, `right_shape` to whether the
    image shows what the caption names there; `exact` is all four. `seen` is what was read per
    slot: a palette colour or shape name, "none" (no object) or "unclear"."""

    exact: bool
    attributes: dict[str, bool]
    seen: dict[str, dict[str, str]] = field(default_factory=dict)


class Shapes:
    """The procedural teacher and verifier for one `ShapesConfig`."""

    def __init__(self, config: ShapesConfig | None = None) -> None:
        self.config = config or ShapesConfig()
        self._check_config()
        self.background = BACKGROUNDS[self.config.background]
        self._split = self._split_compositions()

    # -- vocabulary and captions -------------------------------------------------------------

    @property
    def colors(self) -> list[str]:
        return list(self.config.colors)

    @property
    def shapes(self) -> list[str]:
        return list(self.config.shapes)

    def vocabulary(self) -> list[str]:
        """Every word a caption may use."""
        return [*self.colors, *self.shapes, "left", "of"]

    def caption(self, spec: dict[str, Any]) -> str:
        """The caption of a spec (or of a composition's parse)."""
        left, right = spec["left"], spec["right"]
        return f"{left['color']} {left['shape']} left of {right['color']} {right['shape']}"

    def parse(self, caption: str) -> dict[str, Any] | None:
        """A caption's spec without positions ({"left": {"color", "shape"}, "right": ...}), or
        None when it is not a caption of this config's words."""
        m = _CAPTION.fullmatch(caption.lower())
        if not m:
            return None
        lc, ls, rc, rs = m.groups()
        if {lc, rc} - set(self.colors) or {ls, rs} - set(self.shapes):
            return None
        return {"left": {"color": lc, "shape": ls}, "right": {"color": rc, "shape": rs}}

    # -- compositions and specs --------------------------------------------------------------

    def compositions(self, split: Split = "train") -> list[Composition]:
        """The compositions of a split, in a fixed order: "train", "eval" (held out) or "all"."""
        return list(self._split[split])

    def specs(self, split: Split, count: int, seed: int = 0) -> list[dict[str, Any]]:
        """`count` specs cycling through the split's compositions in a seeded order (each round
        shuffled anew), each object's size and place jittered from `seed` and its index."""
        comps = self.compositions(split)
        if not comps:
            raise UserError(f"generate.teacher: the {split!r} split has no compositions; raise "
                            "generate.teacher.held_out above 0 to hold some out")
        rng = random.Random(f"{self.config.seed}:{seed}:{split}")
        out: list[dict[str, Any]] = []
        while len(out) < count:
            order = comps[:]
            rng.shuffle(order)
            out.extend(self.spec(c, rng) for c in order[:count - len(out)])
        return out

    def spec(self, composition: Composition, rng: random.Random) -> dict[str, Any]:
        """A drawable spec of one composition: each object's colour, shape, box (x, y, side)."""
        s, half = self.config.size, self.config.size // 2
        lo, hi = max(5, round(0.5 * half)), max(5, round(0.85 * half))
        spec: dict[str, Any] = {"size": s, "background": self.config.background}
        for slot, (color, shape) in zip(SLOTS, composition, strict=True):
            side = rng.randint(lo, min(hi, half - 1))
            x = rng.randint(0, half - 1 - side) + (half if slot == "right" else 0)
            y = rng.randint(1, s - 1 - side)
            spec[slot] = {"color": color, "shape": shape, "x": x, "y": y, "side": side}
        return spec

    # -- drawing -----------------------------------------------------------------------------

    def draw(self, spec: dict[str, Any]) -> Image.Image:
        """The RGB image of a spec; an object without a box is centred in its half."""
        s, half = self.config.size, self.config.size // 2
        img = Image.new("RGB", (s, s), self.background)
        pen = ImageDraw.Draw(img)
        for slot in SLOTS:
            obj = spec[slot]
            side = obj.get("side", round(0.7 * half))
            x = obj.get("x", (half - side) // 2 + (half if slot == "right" else 0))
            y = obj.get("y", (s - side) // 2)
            _shape(pen, obj["shape"], x, y, side, side, PALETTE[obj["color"]])
        return img

    # -- verifying ---------------------------------------------------------------------------

    def verify(self, image: Image.Image, caption: str) -> Verdict:
        """Whether `image` shows what `caption` says, per attribute and exactly.

        An image of another size is resized to the canvas first; a caption that is not one of
        this config's is a UserError."""
        want = self.parse(caption)
        if want is None:
            raise UserError(f"caption {caption!r} is not '<colour> <shape> left of <colour> "
                            f"<shape>' in this teacher's words ({', '.join(self.vocabulary())})")
        seen = self.read(image)
        attributes = {f"{slot}_{part}": seen[slot][part] == want[slot][part]
                      for slot in SLOTS for part in ("color", "shape")}
        return Verdict(exact=all(attributes.values()), attributes=attributes, seen=seen)

    def read(self, image: Image.Image) -> dict[str, dict[str, str]]:
        """The colour and shape the verifier sees in each half ("none" or "unclear" when it
        cannot name one)."""
        s = self.config.size
        rgb = image.convert("RGB")
        if rgb.size != (s, s):
            rgb = rgb.resize((s, s), Image.Resampling.BOX)
        pixels = np.asarray(rgb, dtype=np.float32)
        half = s // 2
        return {"left": self._read_half(pixels[:, :half]),
                "right": self._read_half(pixels[:, s - half:])}

    def _read_half(self, pixels: np.ndarray) -> dict[str, str]:
        distance = np.linalg.norm(pixels - np.asarray(self.background, np.float32), axis=2)
        blob = _largest_component(distance > _MIN_BG_DISTANCE / 2)
        if blob.sum() < 8:
            return {"color": "none", "shape": "none"}
        # The object's edge is where it is half as far from the background as its core (the
        # half-maximum contour): a soft or blurred edge, as a student draws it, keeps its place.
        core = float(np.percentile(distance[blob], 90))
        blob = _largest_component(distance > max(core / 2, _MIN_BG_DISTANCE / 2))
        if blob.sum() < 8:
            return {"color": "none", "shape": "none"}
        solid = blob & (distance >= 0.75 * core)
        return {"color": self._color_of(pixels[solid if solid.sum() >= 4 else blob]),
                "shape": self._shape_of(blob)}

    def _color_of(self, pixels: np.ndarray) -> str:
        median = np.median(pixels, axis=0)
        names = self.colors
        dists = [float(np.linalg.norm(median - np.asarray(PALETTE[n]))) for n in names]
        best = int(np.argmin(dists))
        return names[best] if dists[best] < 90 else "unclear"

    def _shape_of(self, blob: np.ndarray) -> str:
        ys, xs = np.nonzero(blob)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        h, w = int(y1 - y0 + 1), int(x1 - x0 + 1)
        if not 0.6 <= w / h <= 1.67:
            return "unclear"
        crop = blob[y0:y1 + 1, x0:x1 + 1]
        scores = {name: _iou(crop, _template(name, w, h)) for name in self.shapes}
        best = max(scores, key=lambda k: scores[k])
        return best if scores[best] >= _MIN_IOU else "unclear"

    # -- the held-out split ------------------------------------------------------------------

    def _check_config(self) -> None:
        c = self.config
        unknown = [n for n in c.colors if n not in PALETTE]
        if unknown:
            raise UserError(f"generate.teacher.colors: {', '.join(unknown)} not in the palette "
                            f"({', '.join(PALETTE)})")
        bad = [n for n in c.shapes if n not in SHAPES]
        if bad:
            raise UserError(f"generate.teacher.shapes: {', '.join(bad)} unknown; pick from "
                            f"{', '.join(SHAPES)}")
        if len(set(c.colors)) < len(c.colors) or len(set(c.shapes)) < len(c.shapes):
            raise UserError("generate.teacher: colors and shapes must not repeat a name")
        bg = np.asarray(BACKGROUNDS[c.background], np.float32)
        close = [n for n in c.colors if np.linalg.norm(np.asarray(PALETTE[n]) - bg)
                 < _MIN_BG_DISTANCE]
        if close:
            raise UserError(f"generate.teacher.colors: {', '.join(close)} too close to the "
                            f"{c.background} background; remove it or change background")

    def _split_compositions(self) -> dict[str, list[Composition]]:
        objects = [(c, s) for c in self.config.colors for s in self.config.shapes]
        every = [(a, b) for a in objects for b in objects]
        want = round(self.config.held_out * len(every))
        if self.config.held_out > 0:
            want = max(want, 1)
        order = every[:]
        random.Random(f"shapes-split:{self.config.seed}").shuffle(order)
        # how many training compositions have each object in each slot
        counts = {(slot, o): len(objects) for slot in SLOTS for o in objects}
        held: set[Composition] = set()
        for comp in order:
            if len(held) == want:
                break
            if counts[("left", comp[0])] > 1 and counts[("right", comp[1])] > 1:
                held.add(comp)
                counts[("left", comp[0])] -= 1
                counts[("right", comp[1])] -= 1
        if len(held) < want:
            raise UserError(f"generate.teacher.held_out = {self.config.held_out}: holding out "
                            f"{want} of {len(every)} compositions would leave an object unseen "
                            "in a slot in training; lower held_out or add colours or shapes")
        return {"train": [c for c in every if c not in held],
                "eval": [c for c in every if c in held], "all": every}


def _shape(pen: ImageDraw.ImageDraw, name: str, x: int, y: int, w: int, h: int,
           color: tuple[int, int, int]) -> None:
    """Draws one shape filling the box (x, y, w, h) with hard edges."""
    x1, y1 = x + w - 1, y + h - 1
    if name == "square":
        pen.rectangle((x, y, x1, y1), fill=color)
    elif name == "circle":
        pen.ellipse((x, y, x1, y1), fill=color)
    elif name == "triangle":
        pen.polygon([(x, y1), (x1, y1), ((x + x1) / 2, y)], fill=color)
    elif name == "diamond":
        cx, cy = (x + x1) / 2, (y + y1) / 2
        pen.polygon([(cx, y), (x1, cy), (cx, y1), (x, cy)], fill=color)
    else:
        raise ValueError(f"unknown shape {name!r}")


_TEMPLATES: dict[tuple[str, int, int], np.ndarray] = {}


def _template(name: str, w: int, h: int) -> np.ndarray:
    """The mask `_shape` draws in a w x h box, cached."""
    key = (name, w, h)
    if key not in _TEMPLATES:
        img = Image.new("RGB", (w, h), (0, 0, 0))
        _shape(ImageDraw.Draw(img), name, 0, 0, w, h, (255, 255, 255))
        _TEMPLATES[key] = np.asarray(img)[:, :, 0] > 127
    return _TEMPLATES[key]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (speckles of noise fall away)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        region, queue = [], deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    for y, x in best:
        out[y, x] = True
    return out
