"""The tiny Multiformer trains on multi-stream batches (issue 8): an hourly atmosphere, a daily curvilinear ocean
with land (NaN) and an unstructured mesh (padded point slots), loaded by one ``fastload.Loader``, normalised (every
stream, the mesh included, with its ``fastload stats`` coefficients), masked, turned into model inputs by the
training loop's ``model_inputs`` (with the padding masks of ``model.multiformer.padding_masks``), and trained on
CPU: the loss falls and stays finite; the same through ``fastload profile`` / ``fastload train`` with a
multi-stream sampling file."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fastload.config import FieldConfig, SamplingConfig, StreamConfig
from fastload.errors import ConfigError
from fastload.loader import Loader
from fastload.sampling.masking import MaskingConfig
from fastload.stats import StatsConfig, compute_stats
from model import FieldSpec, Multiformer, MultiformerConfig, multiformer_loss
from model.multiformer import padding_masks
from profiling.loop import model_inputs
from tests.fastload.stores_multi import make_atmosphere, make_mesh, make_ocean
from tests.fastload.test_streams import BOXES


def _config(d) -> SamplingConfig:
    tok = dict(num_tokens=(2, 2, 2), token_size=(3, 3, 4))
    return SamplingConfig(
        streams=(StreamConfig(name="era5", path=str(d / "a.zarr"), norm_path=str(d / "a-norm.zarr")),
                 StreamConfig(name="ocean", path=str(d / "o.zarr"), time_rule="previous",
                              norm_path=str(d / "o-norm.zarr")),
                 StreamConfig(name="fesom", path=str(d / "m.zarr"), time_rule="nearest",
                              norm_path=str(d / "m-norm.zarr"))),
        fields=(FieldConfig(name="t", levels=(96, 137), normalization="local", stream="era5", **tok),
                FieldConfig(name="thetao", levels=(5.0, 200.0), normalization="local", stream="ocean", **tok),
                FieldConfig(name="temp", levels=(5.0,), normalization="global", stream="fesom", **tok)),
        time_step=2, batch_size=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_multiformer_trains_on_a_multi_stream_batch(tmp_path):
    make_atmosphere(tmp_path / "a.zarr")
    make_ocean(tmp_path / "o.zarr")
    make_mesh(tmp_path / "m.zarr")
    for name in ("a", "o", "m"):  # fastload stats on every stream, the mesh included
        compute_stats(str(tmp_path / f"{name}.zarr"), tmp_path / f"{name}-norm.zarr", StatsConfig(progress=False))
    cfg = _config(tmp_path)
    # boxes over the pole, the seam, the south pole (padded mesh cells) and the ocean's land (NaN)
    with Loader(None, cfg, masking=MaskingConfig(rate=0.6), boxes=BOXES, workers=1, device="cpu",
                seed=0) as loader:
        batch = next(iter(loader))
    levelled = [f.name for f in cfg.fields if f.levels]
    inputs = model_inputs(batch, levelled, torch.device("cpu"))
    for name, item in inputs.items():  # the loop's model_inputs adds the padding masks of point-sampled fields
        if name == "t":  # the reference stream has no point slots
            assert "valid" not in batch.meta[name] and "valid_values" not in item
            continue
        # from the inputs the model is given, never the target (a masked token stays a key, as at inference)
        want = padding_masks(batch.sources[name], batch.meta[name]["valid"])
        assert all(torch.equal(item[k], want[k]) for k in ("valid_values", "valid")), name
    assert not inputs["temp"]["valid_values"].all()  # padded mesh slots
    assert torch.isnan(batch.fields["thetao"]).any() and not inputs["thetao"]["valid_values"].all()  # ocean land
    for item in inputs.values():
        t = item["target"]
        assert t[torch.isfinite(t)].abs().mean() < 5  # normalised values

    torch.manual_seed(0)
    specs = tuple(FieldSpec(name=f.name, levels=tuple(float(v) for v in f.levels), num_tokens=f.num_tokens,
                            token_size=f.token_size, embed_dim=32, num_heads=2,
                            coupled=tuple(g.name for g in cfg.fields if g.name != f.name)) for f in cfg.fields)
    model = Multiformer(MultiformerConfig(fields=specs, num_encoder_layers=2, num_decoder_layers=2,
                                          ensemble_size=2, meta_frequencies=3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, per_field = multiformer_loss(model(inputs), inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert all(torch.isfinite(v) for v in per_field.values())
    assert np.isfinite(losses).all()
    print(f"loss: first 5 steps {np.mean(losses[:5]):.4f}, last 5 {np.mean(losses[-5:]):.4f}")
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("embed.temp.token")]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_padding_masks_follow_the_loaders_valid_mask(tmp_path):
    mesh = make_mesh(tmp_path / "m.zarr")
    make_atmosphere(tmp_path / "a.zarr")
    cfg = _config(tmp_path)
    cfg = dataclasses.replace(cfg, streams=(cfg.streams[0], cfg.streams[2]),
                              fields=tuple(dataclasses.replace(f, normalization="none") for f in cfg.fields
                                           if f.stream != "ocean"))
    with Loader(None, cfg, samples_per_epoch=4, workers=1, device="cpu", seed=1) as loader:
        batch = next(iter(loader))
    assert mesh["temp"].shape[0] == 14
    pads = padding_masks(batch.fields["temp"], batch.meta["temp"]["valid"])
    slot = batch.meta["temp"]["valid"]  # (B, nlat, nlon, K)
    B, nlat, nlon, K = slot.shape
    vv = pads["valid_values"].reshape(B, 1, 2, nlat, nlon, 3, K)  # (B, L, nt, nlat, nlon, tt, K)
    assert torch.equal(vv, slot[:, None, None, :, :, None, :].expand_as(vv))  # mesh values are finite
    want = slot.any(-1) | ~slot.flatten(1).any(-1)[:, None, None]  # a sample without any node keeps its keys
    assert torch.equal(pads["valid"], want[:, None, None].expand(B, 1, 2, nlat, nlon))


def _run_files(d, *, steps: int):
    """The three tiny stores, their coefficients, a multi-stream sampling file (stream paths relative to it) and a
    run file naming it; returns the run file."""
    make_atmosphere(d / "a.zarr")
    make_ocean(d / "o.zarr")
    make_mesh(d / "m.zarr")
    for name in ("a", "o", "m"):
        compute_stats(str(d / f"{name}.zarr"), d / f"{name}-norm.zarr", StatsConfig(progress=False))
    cfg = _config(d)
    streams = tuple(dataclasses.replace(s, path=s.path.rsplit("/", 1)[-1],
                                        norm_path=s.norm_path and s.norm_path.rsplit("/", 1)[-1])
                    for s in cfg.streams)
    (d / "multi.toml").write_text(dataclasses.replace(cfg, streams=streams).to_toml())
    run = d / "run.toml"
    run.write_text("\n".join([
        f"steps = {steps}", "warmup = 1", "log_every = 1", 'device = "cpu"', "threads = 1",
        "[data]", 'sampling = "multi.toml"',
        "[loader]", "workers = 1", "prefetch = 2", "samples_per_epoch = 8", "seed = 4",
        "[model]", "embed_dim = 16", "num_heads = 2", "encoder_layers = 1", "decoder_layers = 1", "ensemble_size = 2",
        "[optim]", "lr = 1e-3", "min_lr = 1e-4", "warmup_steps = 1",
        "[masking]", "rate = 0.5",
    ]) + "\n")
    return run


def test_fastload_profile_and_train_run_a_multi_stream_config(tmp_path, capsys):
    """``fastload profile --config RUN.toml`` / ``fastload train`` with a multi-stream sampling file: the loop reads
    every stream through one Loader (no data.store), feeds point fields' padding masks to the model, and the report
    carries per-stream loader counters that add up to the totals."""
    import json

    from fastload.cli import main as cli
    from profiling.loop import run as run_loop
    from profiling.presets import load_run_config

    run = _run_files(tmp_path, steps=4)
    out = tmp_path / "report"
    assert cli(["profile", "--config", str(run), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 3 and s["samples"] == 3 * 4 and np.isfinite(s["final_loss"])
    assert s["store"] == {n: str(tmp_path / f"{p}.zarr") for n, p in (("era5", "a"), ("ocean", "o"), ("fesom", "m"))}
    lo = s["loader"]
    assert set(lo["streams"]) == {"era5", "ocean", "fesom"}
    assert math.isclose(sum(v["decoded_share"] for v in lo["streams"].values()), 1.0, rel_tol=1e-9)
    for k in ("bytes_stored_per_s", "bytes_decoded_per_s", "bytes_useful_per_s"):  # the streams add up
        assert math.isclose(sum(v[k] for v in lo["streams"].values()), lo[k], rel_tol=1e-9), k
    assert all(v["bytes_useful_per_s"] > 0 for v in lo["streams"].values())
    # train: two steps with a checkpoint, then --store is refused (the streams name their stores)
    ckpt = tmp_path / "ckpt"
    assert cli(["train", "--config", str(run), "--steps", "2", "--checkpoint-dir", str(ckpt),
                "--out", str(tmp_path / "train")]) == 0
    assert (ckpt / "last.pt").is_file()
    assert cli(["train", "--config", str(run), "--steps", "2", "--store", str(tmp_path / "a.zarr")]) == 2
    assert "whose stores are their streams.NAME.path" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="leave data.store"):  # the same from a RunConfig with data.store set
        run_loop(dataclasses.replace(load_run_config(run), data=dataclasses.replace(
            load_run_config(run).data, store=str(tmp_path / "a.zarr"))), log=lambda msg: None)
