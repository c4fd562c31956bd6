"""The default lead (``forecast.lead`` unset: the sample window's ``time_span``) is off the inputs' cadence when
``time_step`` > 1; ``fastload rollout --help`` and ``RolloutConfig.lead`` say so, with an example that matches
what the code computes (review s11 r2 L1: behaviour kept, documented)."""

from __future__ import annotations

import inspect

import pytest

from fastload.config import FieldConfig, SamplingConfig
from fastload.rollout_data import RolloutConfig
from profiling.rollout import main


def test_the_documented_example_is_what_the_code_does(capsys):
    f = FieldConfig(name="t2m", num_tokens=(3, 2, 2), token_size=(1, 4, 4))
    c = SamplingConfig(fields=(f,), batch_size=1, time_step=6)
    lead = c.time_span  # the default of RolloutLoader and fastload rollout
    inputs = [j * c.time_step for j in range(c.box[0])]
    targets = [lead + p for p in inputs]
    assert lead % c.time_step  # off the cadence: the case the documentation warns of
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(box_t - 1) * time_step + 1" in text and "off the inputs' cadence" in text
    assert f"inputs at hours {', '.join(map(str, inputs))}, targets at {', '.join(map(str, targets))}" in text
    src = " ".join(inspect.getsource(RolloutConfig).split())  # the attribute docstring of RolloutConfig.lead
    assert f"the default lead is {lead} and step 1's targets are at {', '.join(map(str, targets))}" in src
