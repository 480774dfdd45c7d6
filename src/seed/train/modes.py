"""The training modes: `train.mode` -> the function that builds its data layout and loss.

Adding a mode is a module with a `layout(ModeInputs) -> Layout` function, a line here and a value
in `TrainConfig.mode`; the loop does not change. This module knows nothing about the loop.
"""

from __future__ import annotations

from collections.abc import Callable

from seed.errors import UserError
from seed.train import distill, dpo, grpo, sft
from seed.train.layout import Layout, ModeInputs


def diffusion_layout(inputs: ModeInputs) -> Layout:
    """The image student's layout; its module imports diffusers (~2 s), so only when it trains."""
    from seed.train.diffusion import layout

    return layout(inputs)


MODES: dict[str, Callable[[ModeInputs], Layout]] = {
    "sft": sft.layout,
    "kd": distill.kd_layout,
    "online_kd": distill.online_kd_layout,
    "dpo": dpo.layout,
    "grpo": grpo.layout,
    "diffusion": diffusion_layout,
}


def build_layout(inputs: ModeInputs) -> Layout:
    """The layout of `inputs.config.mode` over `inputs.records`."""
    config = inputs.config
    if config.loss_chunk and config.mode != "sft":
        raise UserError(f"train.loss_chunk applies to mode = 'sft' only, not {config.mode!r}; "
                        "remove it")
    return MODES[config.mode](inputs)
