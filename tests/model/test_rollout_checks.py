"""The Forecaster checks a rollout's geometry and lead time against its state (audit F7), once per call.

Every entry point that takes them (``step``, ``decode``, ``rollout``, ``rollout_loss``) raises a
:class:`ModelConfigError` naming itself, the argument and what it expected, where it used to fail inside torch (a
broadcast error for a wrong tile count, an ``IndexError``, on a GPU a device-side assert, for a neighbour index
``>= T``, an ``expand`` error for a lead time of another batch size), or to run on silently (a negative neighbour
index wrapped to the last tiles). The neighbour values are read once per neighbours tensor, not per step.
"""

from __future__ import annotations

import pytest
import torch

from model import ModelConfigError, TileGeometry
from model._geometry import RolloutCheck

from .test_forecaster import _setup

B, T = 2, 16  # test_forecaster's ring of 2 x 8 tiles


def _state(model):
    c = model.config
    return torch.randn(B, c.input_window, T, c.latent_queries, c.latent_dim, generator=torch.Generator().manual_seed(0))


def _call(model, where, state, geometry, lead_time=6.0):
    if where == "step":
        return model.step(state, lead_time, geometry)
    if where == "decode":
        return model.decode(state, geometry)
    if where == "rollout":
        return model.rollout(state, 3, lead_time=lead_time, geometry=geometry)
    return model.rollout_loss(state, [{}, {}], lead_time=lead_time, geometry=geometry)


def _bad_geometries(geo):
    nb = geo.neighbors
    negative = nb.clone()
    negative[3, 2] = -1
    nan_lat, inf_lon = geo.lat.clone(), geo.lon.clone()
    nan_lat[4] = float("nan")
    inf_lon[[2, 9]] = float("inf")
    return {
        "NaN latitude": (TileGeometry(nan_lat, geo.lon, nb),
                         r"geometry\.lat: expected finite tile centres in degrees, got 1 not finite \(first: "
                         r"lat\[4\] = nan\)"),
        "infinite longitudes": (TileGeometry(geo.lat, inf_lon, nb),
                                r"geometry\.lon: expected finite tile centres in degrees, got 2 not finite \(first: "
                                r"lon\[2\] = inf\)"),
        "one tile short": (TileGeometry(geo.lat[:15], geo.lon[:15], nb[:15] % 15),
                           r"geometry\.lat: expected a floating-point tensor of shape \(T,\) = \(16,\).*shape \(15,\)"),
        "neighbours of 15 tiles": (TileGeometry(geo.lat, geo.lon, nb[:15]),
                                   r"geometry\.neighbors: expected an integer tensor of shape \(T, K\) with T = 16"),
        "index >= T": (TileGeometry(geo.lat, geo.lon, nb + T),
                       r"geometry\.neighbors: expected tile indices in \[0, 15\] \(the state has T = 16 tiles\), got "
                       r"values in \[16, 31\] \(first: neighbors\[0, 0\] = 23\)"),
        "negative index": (TileGeometry(geo.lat, geo.lon, negative),
                           r"geometry\.neighbors: expected tile indices in \[0, 15\].*got values in \[-1, 15\] \(first: neighbors\[3, 2\] = -1\)"),
        "float neighbours": (TileGeometry(geo.lat, geo.lon, nb.float()),
                             r"geometry\.neighbors: expected an integer tensor .*got a float32 tensor"),
        "integer latitudes": (TileGeometry(geo.lat.long(), geo.lon, nb), r"geometry\.lat: expected a floating-point"),
        "not a geometry": ((geo.lat, geo.lon), r"geometry: expected a TileGeometry\(lat, lon, neighbors\), got a tuple"),
    }


@pytest.mark.parametrize("where", ["step", "decode", "rollout", "rollout_loss"])
@pytest.mark.parametrize("case", ["one tile short", "neighbours of 15 tiles", "index >= T", "negative index",
                                  "float neighbours", "integer latitudes", "not a geometry", "NaN latitude",
                                  "infinite longitudes"])
def test_a_geometry_that_does_not_fit_the_state_is_named(where, case):
    model, geo, _, _ = _setup()
    bad, match = _bad_geometries(geo)[case]
    with pytest.raises(ModelConfigError, match=rf"^{where}: {match}"):
        _call(model, where, _state(model), bad)


@pytest.mark.parametrize("where", ["step", "rollout", "rollout_loss"])
@pytest.mark.parametrize("lead", [torch.tensor([6.0, 6.0, 6.0]), torch.full((B, 1), 6.0), torch.tensor(True),
                                  float("nan"), float("inf"), True, "6"])
def test_a_lead_time_that_does_not_fit_the_state_is_named(where, lead):
    model, geo, _, _ = _setup()
    with pytest.raises(ModelConfigError, match=rf"^{where}: lead_time: expected hours per step, a finite number or a "
                                               rf"real tensor of shape \(\), \(1,\) or \(B,\) = \({B},\)"):
        _call(model, where, _state(model), geo, lead)


@pytest.mark.parametrize("lead", [6.0, 6, torch.tensor(6.0), torch.tensor([6.0]), torch.tensor([6.0, 6.0]),
                                  torch.tensor([6, 6])])
def test_every_documented_lead_time_gives_the_same_step(lead):
    model, geo, _, _ = _setup()
    for p in model.tail.parameters():  # off the identity, so that the lead time matters
        p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    state = _state(model)
    with torch.no_grad():
        want = model.step(state, torch.full((B,), 6.0), geo)
        assert torch.equal(model.step(state, lead, geo), want)
        assert not torch.equal(model.step(state, 12.0, geo), want)


@pytest.mark.parametrize("where", ["step", "decode", "rollout", "rollout_loss"])
def test_a_state_that_does_not_fit_the_config_is_named(where):
    model, geo, _, _ = _setup()
    state = _state(model)
    for bad in (state[:, :, :, :3], state[0], state.numpy()):
        with pytest.raises(ModelConfigError, match=rf"^{where}: state: expected a tensor \(B, W, T, Q, C\) with "
                                                   r"W, Q, C = \(1, 4, 32\)"):
            _call(model, where, bad, geo)


def test_a_rollout_checks_once_and_reads_the_neighbours_on_the_cpu_every_call(monkeypatch):
    """``rollout`` checks its inputs once, not per step. On the CPU the neighbour values are read at every check (no
    sync there, microseconds), so no edit escapes it: in place, through ``.data`` (no version bump), or a new
    ``.data`` (review r6 M1); on an accelerator a checked tensor is read once (the GPU test)."""
    model, geo, _, _ = _setup()
    calls = []
    check = RolloutCheck.geometry
    monkeypatch.setattr(RolloutCheck, "geometry", lambda self, *a: (calls.append(1), check(self, *a))[1])
    with torch.no_grad():
        model.rollout(_state(model), 4, lead_time=6.0, geometry=geo, decode_at=[1, 2, 3, 4])
    assert len(calls) == 1
    monkeypatch.undo()

    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (reads.append(1), tolist(self))[1])
    checker, state = RolloutCheck(), _state(model)
    nb = geo.neighbors.clone()
    own = TileGeometry(geo.lat, geo.lon, nb)
    for _ in range(3):
        checker.geometry(own, state, "step")
    assert len(reads) == 3
    nb[5, 1] = T  # in place
    with pytest.raises(ModelConfigError, match=r"first: neighbors\[5, 1\] = 16"):
        checker.geometry(own, state, "step")
    nb[5, 1] = 0
    checker.geometry(own, state, "step")
    nb.data[2, 0] = T + 1  # through .data: no version bump
    with pytest.raises(ModelConfigError, match=r"first: neighbors\[2, 0\] = 17"):
        checker.geometry(own, state, "step")
    nb.data[2, 0] = 0
    lat = geo.lat.clone()
    own = TileGeometry(lat, geo.lon, nb)
    checker.geometry(own, state, "step")
    lat[7] = float("nan")  # the tile centres are read at every call too
    with pytest.raises(ModelConfigError, match=r"first: lat\[7\] = nan"):
        checker.geometry(own, state, "step")


def test_a_geometry_made_under_inference_mode_rolls_out(monkeypatch):
    """Review r6 H1: inference tensors have no version counter; a geometry made under torch.inference_mode() made
    step/decode/rollout fail with 'Inference tensors do not track version counter'."""
    model, geo, _, _ = _setup()
    with torch.inference_mode():
        inf = TileGeometry(geo.lat.clone(), geo.lon.clone(), geo.neighbors.clone())
        state = _state(model)
        out = model.rollout(state, 2, lead_time=6.0, geometry=inf, decode_at=[1, 2])
    with torch.no_grad():
        ref = model.rollout(_state(model), 2, lead_time=6.0, geometry=geo, decode_at=[1, 2])
    assert len(out) == len(ref)


def _check_without_a_sync(model, state, geometry):
    """The rollout's check of an already checked ``geometry``, with CUDA's sync debug mode raising on any sync."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model._check("rollout", model.config, state, geometry, torch.full((B,), 6.0, device=state.device))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Synchronization debug mode:UserWarning")  # torch calls it a prototype feature
def test_on_a_gpu_a_bad_neighbour_is_an_error_not_a_device_assert_and_a_checked_geometry_costs_no_sync():
    dev = torch.device("cuda")
    model, geo, _, _ = _setup()
    model = model.to(dev)
    geo = TileGeometry(*(x.to(dev) for x in geo))
    state = _state(model).to(dev)
    with pytest.raises(ModelConfigError, match=r"^rollout: geometry\.neighbors: expected tile indices in \[0, 15\]"):
        model.rollout(state, 2, lead_time=6.0, geometry=TileGeometry(geo.lat, geo.lon, geo.neighbors + T))
    with pytest.raises(ModelConfigError, match=r"^rollout: geometry\.lat: on cpu, the state on cuda"):
        model.rollout(state, 2, lead_time=6.0, geometry=TileGeometry(geo.lat.cpu(), geo.lon, geo.neighbors))
    with torch.no_grad():
        model.rollout(state, 2, lead_time=6.0, geometry=geo)  # the first check of this geometry reads it
        _check_without_a_sync(model, state, geo)
        # neighbours on the CPU beside centres on the GPU (review rv2 finding 4): the first check reads both (two
        # devices, two reads), later ones only the CPU neighbours (no sync)
        mixed = TileGeometry(geo.lat, geo.lon, geo.neighbors.cpu())
        model.rollout(state, 2, lead_time=6.0, geometry=mixed)
        nan_lat = geo.lat.clone()
        nan_lat[3] = float("nan")
        with pytest.raises(ModelConfigError, match=r"^rollout: geometry\.lat: expected finite tile centres"):
            model.rollout(state, 2, lead_time=6.0, geometry=TileGeometry(nan_lat, geo.lon, mixed.neighbors))
        model.rollout(state, 2, lead_time=6.0, geometry=mixed)  # the centres checked again (another tensor last)
        _check_without_a_sync(model, state, mixed)


def test_a_geometry_of_no_tiles_checks_clean():
    """Review rv3: with T = 0 and no neighbours the range check read a range of nothing as [0, 0] and failed with an
    IndexError (dac6e4f; before it: no error)."""
    state = torch.zeros(B, 1, 0, 4, 32)
    RolloutCheck().geometry(TileGeometry(torch.zeros(0), torch.zeros(0), torch.zeros(0, 4, dtype=torch.long)),
                            state, "step")
