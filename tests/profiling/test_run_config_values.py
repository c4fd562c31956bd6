"""Run-config values the optimiser or the loop would only refuse later, with a traceback, or silently ignore: each
is a ConfigError naming the setting when the config is built (a reviewer's findings, session 16)."""

from __future__ import annotations

import math

import pytest

from fastload.errors import ConfigError
from profiling.presets import load_run_config
from profiling.run_config import OptimConfig, RunConfig, ValidationConfig


@pytest.mark.parametrize("key, value, said", [
    ("beta1", 1.0, "optim.beta1: expected a number in [0.0, 1.0), got 1.0"),  # AdamW: "Invalid beta parameter"
    ("beta2", 1, "optim.beta2: expected a number in [0.0, 1.0), got 1"),
    ("weight_decay", math.inf, "optim.weight_decay: expected a number >= 0.0 (finite), got inf"),  # every weight nan
    ("lr", math.nan, "optim.lr: expected a number >= 0.0 (finite), got nan"),
    ("grad_clip", math.inf, "optim.grad_clip: expected a number >= 0.0 (finite), got inf"),
])
def test_optimiser_values_adamw_would_refuse_or_that_poison_the_weights(key, value, said):
    with pytest.raises(ConfigError) as e:
        OptimConfig(**{key: value})
    assert str(e.value) == said
    assert OptimConfig(beta1=0.0, beta2=0.999999).beta2 == 0.999999  # the half-open end is still allowed


@pytest.mark.parametrize("section", ["data", "loader", "model", "optim", "masking", "forecast", "validation"])
@pytest.mark.parametrize("value", [3, [], "x"])
def test_a_section_that_is_not_a_table(section, value):
    """``model = 3`` in a run file was a TypeError traceback (``validation = "x"``: "unknown setting(s) ['x']")."""
    d = {"data": {"sampling": {"fields": {"t": {}}}}, section: value}
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d)
    assert str(e.value) == (f"run config: [{section}] must be a table of settings ([{section}] followed by "
                            f"key = value lines), got {section} = {value!r}")


@pytest.mark.parametrize("kw, said", [
    (dict(every=1), "every = 1"), (dict(samples=8), "samples = 8"), (dict(seed=3, every=2), "every = 2, seed = 3"),
])
def test_validation_settings_without_a_period_are_refused(kw, said, tmp_path):
    """Refused by the run (``check_used``, called with the run's checks), not when the section is built: a run
    file's ``[validation] every = 1`` may get its period from ``--set`` (reviewer R4: it was refused there)."""
    from profiling.validation import check_mode

    with pytest.raises(ConfigError) as e:
        check_mode(load_run_config(None, overrides=[f"validation.{k}={v}" for k, v in kw.items()]), "train")
    assert str(e.value).startswith(f"validation: {said} given without validation.time_range")
    ValidationConfig(time_range=(0, 5), **kw).check_used()  # with a period they are taken
    # --set applies a section's overrides together: the order on the command line does not matter
    cfg = load_run_config(None, overrides=["validation.every=5", "validation.time_range=2021-01-01T12,2021-01-02"])
    assert cfg.validation.every == 5
    # a run file's section completed by --set
    from tests.profiling.loopdata import run_toml

    path = run_toml(tmp_path, "store.zarr", "norm.zarr")
    path.write_text(path.read_text() + "[validation]\n" + "".join(f"{k} = {v}\n" for k, v in kw.items()))
    cfg = load_run_config(path, overrides=["validation.time_range=[12,24]"])
    assert cfg.validation.time_range == (12, 24)
    check_mode(cfg, "train")
