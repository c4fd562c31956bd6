"""From a fastload ``Batch`` to the Multiformer: :func:`model.model_inputs`, and the errors of the natural mistakes.

A real ``fastload.Loader`` (thread workers, masking on and off) on a tiny zarr store feeds :func:`model.model_inputs`;
the result is compared entry by entry with the batch it came from (indices walked by hand, not broadcast), then run
through the Multiformer and its loss. Giving the model the ``Batch`` itself or its ``fields`` raises a
:class:`ModelConfigError` that names :func:`model.model_inputs` (audit F1: it was ``KeyError: 0`` and
``TypeError: new(): invalid data type 'str'``).
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import model
from fastload.config import FieldConfig, SamplingConfig
from fastload.loader import Loader
from model import FieldSpec, ModelConfigError, Multiformer, MultiformerConfig, multiformer_loss
from model.multiformer import padding_masks
from tests.fastload.stores import make_per_variable

LEVELS = (500.0, 850.0)
NUM_TOKENS, TOKEN_SIZE = (1, 2, 2), (2, 2, 3)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "s.zarr"
    make_per_variable(path, levels=LEVELS, missing_chunk=False, static=False)
    return str(path)


def _config() -> SamplingConfig:
    fields = tuple(FieldConfig(name=n, levels=lv, num_tokens=NUM_TOKENS, token_size=TOKEN_SIZE, normalization="none")
                   for n, lv in (("t", LEVELS), ("sp", None)))
    return SamplingConfig(fields=fields, batch_size=2)


def _batch(store, masking):
    with Loader(store, _config(), masking=masking, device="cpu", workers=1, samples_per_epoch=2, seed=1) as ld:
        return next(iter(ld))


def _net() -> Multiformer:
    torch.manual_seed(0)
    specs = tuple(FieldSpec(name=n, levels=lv, num_tokens=NUM_TOKENS, token_size=TOKEN_SIZE, embed_dim=16, num_heads=2)
                  for n, lv in (("t", LEVELS), ("sp", (0.0,))))
    return Multiformer(MultiformerConfig(fields=specs, num_encoder_layers=1, num_decoder_layers=1, ensemble_size=2))


@pytest.mark.parametrize("masking", [None, "BERT"])
def test_model_inputs_of_a_loader_batch(store, masking):
    batch = _batch(store, masking)
    x = model.model_inputs(batch)
    assert set(x) == {"t", "sp"}
    for name, item in x.items():
        m = batch.meta[name]
        b, nl, nt, ny, nx = batch.fields[name].shape[:5]
        hour, doy, lat, lon = (m[k].numpy() for k in ("hour", "day_of_year", "lat", "lon"))
        level = m["level"].numpy()
        for i, lv, it, iy, ix in np.ndindex(b, nl, nt, ny, nx):
            got = {k: float(v[i, lv, it, iy, ix]) for k, v in item["meta"].items()}
            assert got["time_of_day"] == hour[i, it] and got["day_of_year"] == doy[i, it]
            assert got["lat"] == lat[i, iy, ix] and got["lon"] == lon[i, iy, ix]
            assert got["level"] == level[lv] or (math.isnan(got["level"]) and math.isnan(level[lv]))
        assert item["target"] is batch.fields[name]
        if masking is None:  # nothing masked: the inputs are the targets, and there is no mask
            assert item["tokens"] is batch.fields[name] and "mask" not in item
        else:
            assert item["tokens"] is batch.sources[name] and item["mask"] is batch.masks[name]
            assert bool(item["mask"].any())
        assert "valid" not in item and "valid_values" not in item  # a lat-lon store: no point slots
    assert [float(v) for v in x["t"]["meta"]["level"][0, :, 0, 0, 0]] == list(LEVELS)
    assert torch.isnan(x["sp"]["meta"]["level"]).all()  # a field without levels: NaN, "not given"

    net = _net()
    out = net(x)
    for name, spec in zip(("t", "sp"), net.config.fields):
        assert out[name].shape == (2, 2, *spec.sample_shape) and torch.isfinite(out[name]).all()
    loss, _ = multiformer_loss(out, x)
    assert torch.isfinite(loss)
    # the surface field's NaN level is the same as giving none (its one level embedding), bit for bit
    no_level = {**x, "sp": {**x["sp"], "meta": {k: v for k, v in x["sp"]["meta"].items() if k != "level"}}}
    assert torch.equal(net(no_level)["sp"], out["sp"])
    only = model.model_inputs(batch, levelled=["t"])  # the training loop's choice: only fields with levels
    assert "level" in only["t"]["meta"] and "level" not in only["sp"]["meta"]


def test_the_batch_itself_or_its_fields_name_model_inputs(store):
    batch = _batch(store, "BERT")
    net = _net()
    with pytest.raises(ModelConfigError, match=r"^batch: expected a mapping .*got a loader batch \(Batch\); "
                                               r"model\.model_inputs\(batch\) makes it"):
        net(batch)
    with pytest.raises(ModelConfigError, match=r"batch\['t'\]: expected a mapping with 'tokens'.*got a float32 "
                                               r"tensor of shape \(2, 2, 1, 2, 2, 2, 2, 3\); model\.model_inputs"):
        net(batch.fields)
    item = model.model_inputs(batch)["t"]
    with pytest.raises(ModelConfigError, match=r"batch\['t'\]: expected a mapping with 'tokens'.*keys \['meta'\]"):
        net({"t": {"meta": item["meta"]}, "sp": item})


def test_model_inputs_refuses_what_is_not_a_loader_batch():
    with pytest.raises(ModelConfigError, match=r"model_inputs: expected a fastload Batch .*got a dict"):
        model.model_inputs({"t": torch.zeros(1)})
    meta = {"hour": torch.zeros(1, 1), "day_of_year": torch.zeros(1, 1), "lat": torch.zeros(1, 2, 2),
            "lon": torch.zeros(1, 2, 2), "level": torch.zeros(1)}
    rollout_like = types.SimpleNamespace(fields={"t": torch.zeros(1, 1, 1, 1, 1, 2, 2, 1, 1)}, meta={"t": meta})
    with pytest.raises(ModelConfigError, match=r"batch\.fields\['t'\]: expected a tensor .*RolloutBatch"):
        model.model_inputs(rollout_like)
    ok = types.SimpleNamespace(fields={"t": torch.zeros(1, 1, 1, 2, 2, 1, 1, 1)}, meta={"t": meta})
    with pytest.raises(ModelConfigError, match=r"levelled names field\(s\) \['u'\]"):
        model.model_inputs(ok, levelled=["u"])
    no_hour = types.SimpleNamespace(fields=ok.fields, meta={"t": {k: v for k, v in meta.items() if k != "hour"}})
    with pytest.raises(ModelConfigError, match=r"batch\.meta\['t'\]: missing \['hour'\]"):
        model.model_inputs(no_hour)


def test_model_inputs_point_slots_give_padding_masks_of_the_inputs():
    """A field with a ``valid`` slot mask (mesh, multi-stream) gets :func:`padding_masks` of its masked inputs, never
    of its target."""
    B, L, nt, ny, nx, K = 2, 1, 2, 2, 3, 4
    g = torch.Generator().manual_seed(0)
    slot = torch.rand(B, ny, nx, K, generator=g) < 0.7
    target = torch.randn(B, L, nt, ny, nx, 1, 1, K, generator=g)
    target = target.masked_fill(~slot[:, None, None, :, :, None, None, :], float("nan"))
    mask = torch.zeros(B, L, nt, ny, nx, dtype=torch.bool)
    mask[0, 0, 1, 1, 2] = True
    sources = target.masked_fill(mask[..., None, None, None], 0.0)
    meta = {"hour": torch.zeros(B, nt), "day_of_year": torch.ones(B, nt), "lat": torch.zeros(B, ny, nx),
            "lon": torch.zeros(B, ny, nx), "level": torch.full((1,), float("nan")), "valid": slot}
    batch = types.SimpleNamespace(fields={"p": target}, meta={"p": meta}, masks={"p": mask}, sources={"p": sources})
    got = model.model_inputs(batch)["p"]
    want = padding_masks(sources, slot)
    assert torch.equal(got["valid"], want["valid"]) and torch.equal(got["valid_values"], want["valid_values"])


def test_the_readme_example_runs_as_written(store, tmp_path, monkeypatch):
    """The README's Python-API example of ``model.model_inputs``, run unchanged in a folder whose ``era.zarr`` is
    the tiny store and whose ``sample.toml`` samples it."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "model.model_inputs(batch)" in b]
    assert len(blocks) == 1
    (tmp_path / "era.zarr").symlink_to(store)
    toml = ["batch_size = 2"]
    for name, levels in (("t", LEVELS), ("sp", None)):
        toml += [f"[fields.{name}]", f"num_tokens = {list(NUM_TOKENS)}", f"token_size = {list(TOKEN_SIZE)}",
                 'normalization = "none"'] + ([f"levels = {list(levels)}"] if levels else [])
    (tmp_path / "sample.toml").write_text("\n".join(toml) + "\n")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and set(scope["per_field"]) == {"t", "sp"}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scope["net"].parameters())
