"""Held-out caption accuracy of a from-scratch image student vs training steps, and s/step.

Trains Seed's pixel-space student (seed.train.diffusion_models, the diffusion mode's loss and
EMA) on shapes teacher images in memory, and every `--eval-every` steps draws `--eval-n` held-out
captions (compositions never trained on) from each of two sampling seeds with the EMA weights and
scores them with the shapes verifier. Prints one RESULT line per evaluation:

    RESULT step=1500 exact=0.62 left_color=... s_per_step=0.11 load=2.1 ...

It is the research tool behind recipes/images.toml's [train] table: what to set, not `seed run`
itself (the lead times that end to end).

    .venv/bin/python benchmarks/images_train.py --steps 3000 --eval-every 500
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.endpoints.shapes import Shapes
from seed.recipe import ShapesConfig, TrainConfig
from seed.train.diffusion import Ema, flow_loss
from seed.train.diffusion_models import ImageStudent, Sampling, StudentShape, build_parts
from seed.train.optim import make_optimizer


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--colors", default="red,green,blue,yellow")
    p.add_argument("--shapes", default="circle,square,triangle")
    p.add_argument("--channels", default="32,64,64")
    p.add_argument("--attention", default="0,1,1", help="cross-attention per resolution (0/1)")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--schedule", default="logit_normal", choices=["logit_normal", "uniform"])
    p.add_argument("--dropout", type=float, default=0.1, help="caption dropout")
    p.add_argument("--images", type=int, default=4000, help="training images")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-n", type=int, default=256, help="held-out images per sampling seed")
    p.add_argument("--sample-steps", type=int, default=12)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights")
    return p.parse_args()


def data(shapes: Shapes, tokenizer: Any, count: int,
         seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    specs = shapes.specs("train", count, seed=seed)
    pixels = torch.stack([torch.from_numpy(np.asarray(shapes.draw(s)).copy()).permute(2, 0, 1)
                          for s in specs])
    ids = tokenizer([shapes.caption(s) for s in specs], padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return pixels, ids


def accuracy(shapes: Shapes, pipeline: ImagePipeline, n: int, args: argparse.Namespace
             ) -> dict[str, float]:
    counts: dict[str, float] = {}
    total = 0
    for sampling_seed in (1, 2):
        specs = shapes.specs("eval", n, seed=1000 + sampling_seed)
        captions = [shapes.caption(s) for s in specs]
        for start in range(0, n, 128):
            chunk = captions[start:start + 128]
            images = pipeline.draw([DrawRequest(c, seed=sampling_seed * 100_000 + start + i,
                                                steps=args.sample_steps, guidance=args.guidance)
                                    for i, c in enumerate(chunk)])
            for image, caption in zip(images, chunk, strict=True):
                v = shapes.verify(image, caption)
                counts["exact"] = counts.get("exact", 0) + v.exact
                for k, ok in v.attributes.items():
                    counts[k] = counts.get(k, 0) + ok
                total += 1
    return {k: round(v / total, 3) for k, v in counts.items()}


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    config = ShapesConfig(size=args.size, colors=args.colors.split(","),
                          shapes=args.shapes.split(","))
    shapes = Shapes(config)
    channels = tuple(int(c) for c in args.channels.split(","))
    attention = tuple(a == "1" for a in args.attention.split(","))
    shape = StudentShape(size=args.size, channels=channels, attention=attention,
                         layers_per_block=args.layers, head_dim=args.head_dim,
                         text_width=args.text_width, text_layers=args.text_layers)
    unet, text_encoder, tokenizer = build_parts(shapes.vocabulary(), shape, args.seed)
    model = ImageStudent(unet, text_encoder)
    print(f"params {sum(p.numel() for p in model.parameters()):,} compositions "
          f"train {len(shapes.compositions('train'))} eval {len(shapes.compositions('eval'))}",
          flush=True)
    pixels, ids = data(shapes, tokenizer, args.images, args.seed)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids[0]
    # The loop's optimizer and schedule (AdamW, decay on matrices, warmup + cosine).
    opt, sched = make_optimizer(model, TrainConfig(
        mode="diffusion", lr=args.lr, warmup_steps=args.warmup, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, max_steps=args.steps), args.steps)
    ema = Ema(model, args.ema)
    g = torch.Generator().manual_seed(args.seed)
    train_s, cpu_s, loss_sum = 0.0, 0.0, 0.0
    for step in range(1, args.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        idx = torch.randint(len(pixels), (args.batch,), generator=g)
        batch_ids = ids[idx].clone()
        batch_ids[torch.rand(args.batch, generator=g) < args.dropout] = empty
        loss, count = flow_loss(model, {"pixels": pixels[idx], "ids": batch_ids}, args.schedule)
        (loss / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        ema.update(model)
        train_s += time.perf_counter() - t0
        cpu_s += time.process_time() - c0
        loss_sum += float(loss.detach()) / count
        if step % args.eval_every == 0 or step == args.steps:
            student = model if args.no_ema else ema.averaged(model)
            student.eval()
            pipeline = ImagePipeline("bench", student.unet, student.text_encoder, tokenizer,
                                     Sampling(sizes=[(args.size, args.size)]))
            t1 = time.perf_counter()
            acc = accuracy(shapes, pipeline, args.eval_n, args)
            fields = " ".join(f"{k}={v}" for k, v in acc.items())
            print(f"RESULT step={step} {fields} loss={loss_sum / args.eval_every:.4f} "
                  f"s_per_step={train_s / step:.4f} cpu_s_per_step={cpu_s / step:.4f} "
                  f"eval_s={time.perf_counter() - t1:.1f} "
                  f"load={os.getloadavg()[0]:.1f}", flush=True)
            loss_sum = 0.0


if __name__ == "__main__":
    main()
