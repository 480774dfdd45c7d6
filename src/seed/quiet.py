"""Third-party progress bars kept out of Seed's output while a model is loaded or saved.

transformers draws a tqdm bar for every `from_pretrained` ("Loading weights") and
`save_pretrained` ("Writing model shards"), and huggingface_hub one per download; for the small
local files Seed loads they finish at once and say nothing the user needs, yet they land between
Seed's own lines. `quiet_progress_bars()` turns both libraries' bars off for a block and puts back
what was there before. Warnings stay: transformers' load report (weights missing or unexpected) is
news the user needs. Any stage (eval, train, serve) can wrap its loads in it; this module knows
nothing about models.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off inside the block, restored after."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as transformers_logging

    transformers_on = transformers_logging.is_progress_bar_enabled()
    hub_on = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # turns the hub's off as well
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()  # turns the hub's on as well
        if hub_on != (not are_progress_bars_disabled()):
            (enable_progress_bars if hub_on else disable_progress_bars)()
