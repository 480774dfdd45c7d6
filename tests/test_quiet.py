"""Seed's output carries no third-party progress bars: `seed eval` end to end, and the helper."""

import pytest
from huggingface_hub.utils import are_progress_bars_disabled
from transformers.utils import logging as transformers_logging

from helpers.cli import run_cli
from seed.quiet import quiet_progress_bars


def test_seed_eval_prints_its_result_and_no_loading_weights_bar(tiny_model_dir, arithmetic_data,
                                                                tmp_path):
    done = run_cli("eval", tiny_model_dir, arithmetic_data / "eval.jsonl", "--out", tmp_path,
                   "--baseline", tiny_model_dir)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "held-out prompts" in done.stdout  # "accuracy X% on 20 held-out prompts"
    assert "Loading weights" not in output and "it/s]" not in output  # no tqdm bar at all


@pytest.mark.parametrize("on_before", [True, False])
def test_the_bars_are_off_inside_the_block_and_as_before_after_it(on_before):
    (transformers_logging.enable_progress_bar if on_before
     else transformers_logging.disable_progress_bar)()
    try:
        with quiet_progress_bars():
            assert not transformers_logging.is_progress_bar_enabled()
            assert are_progress_bars_disabled()
        assert transformers_logging.is_progress_bar_enabled() is on_before
        assert are_progress_bars_disabled() is not on_before
    finally:
        transformers_logging.enable_progress_bar()
