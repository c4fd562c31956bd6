"""Dtypes of a batch's entries (audit F6): ``check_batch`` names the entry and the dtype it needs, before any torch
kernel sees it.

``mask`` and ``valid``: bool, or uint8 read as bool (a uint8 mask used to warn of a deprecation from ``torch.where``
and a uint8 ``valid`` to fail in attention; both now give exactly what the bool tensors give). A float or int64 one
is refused (it used to fail deep in torch: ``where expected condition to be a boolean tensor``, ``"bitwise_and_cpu"
not implemented for 'Float'``). ``tokens`` and ``target``: any floating dtype (cast to the model's), never integer
(no NaN for a missing value; not normalised data).
"""

from __future__ import annotations

import pytest
import torch

from model import Forecaster, ForecasterConfig, ModelConfigError, Multiformer, MultiformerConfig

META = ("time_of_day", "day_of_year", "lat", "lon")


def _case():
    torch.manual_seed(0)
    net = Multiformer(MultiformerConfig.tiny(num_fields=1))
    s = net.config.fields[0]
    grid = (2, s.num_levels, *s.num_tokens)
    g = torch.Generator().manual_seed(1)
    item = {"tokens": torch.randn(*grid, *s.token_size, generator=g),
            "meta": {k: torch.rand(grid, generator=g) * 10 for k in META},
            "mask": torch.rand(grid, generator=g) < 0.5, "valid": torch.rand(grid, generator=g) < 0.8}
    return net, s.name, item


@pytest.mark.parametrize("key", ["mask", "valid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.float16])
def test_a_mask_or_valid_of_another_dtype_is_named(key, dtype):
    net, name, item = _case()
    bad = {name: {**item, key: item[key].to(dtype)}}
    short = str(dtype).removeprefix("torch.")
    with pytest.raises(ModelConfigError, match=rf"batch\['{name}'\]\['{key}'\]: expected a bool tensor .*got {short}"):
        net(bad)
    fc = Forecaster(ForecasterConfig.tiny(), net)  # the Forecaster's batches (B, T, ...) are checked alike
    tiles = {k: (v[:, None] if k != "meta" else {m: x[:, None] for m, x in v.items()}) for k, v in bad[name].items()}
    with pytest.raises(ModelConfigError, match=rf"batch\['{name}'\]\['{key}'\]: expected a bool tensor"):
        fc.encode({name: tiles})


def test_uint8_mask_and_valid_are_read_as_bool():
    net, name, item = _case()
    want = net({name: item})[name]
    got = net({name: {**item, "mask": item["mask"].to(torch.uint8), "valid": item["valid"].to(torch.uint8)}})[name]
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_tokens_or_target_are_refused(dtype):
    net, name, item = _case()
    short = str(dtype).removeprefix("torch.")
    with pytest.raises(ModelConfigError, match=rf"batch\['{name}'\]\['tokens'\]: expected a floating-point tensor"
                                               rf" .*got a {short} tensor"):
        net({name: {**item, "tokens": item["tokens"].to(dtype)}})
    with pytest.raises(ModelConfigError, match=rf"batch\['{name}'\]\['target'\]: expected a floating-point tensor"):
        net({name: {**item, "target": item["tokens"].to(dtype)}})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_floating_tokens_of_any_precision_are_cast_to_the_model(dtype):
    """Tokens that are float32 values held in another floating dtype give the float32 result exactly."""
    net, name, item = _case()
    tokens = item["tokens"].to(dtype)
    want = net({name: {**item, "tokens": tokens.float()}})[name]
    assert torch.equal(net({name: {**item, "tokens": tokens}})[name], want)


def test_non_tensor_entries_are_named():
    net, name, item = _case()
    with pytest.raises(ModelConfigError, match=rf"batch\['{name}'\]\['meta'\]\['lat'\]: expected a tensor .*got a list"):
        net({name: {**item, "meta": {**item["meta"], "lat": [0.0]}}})
    with pytest.raises(ModelConfigError, match=rf"batch\['{name}'\]\['tokens'\]: expected a floating-point tensor"
                                               r" .*got a list"):
        net({name: {**item, "tokens": [0.0]}})
