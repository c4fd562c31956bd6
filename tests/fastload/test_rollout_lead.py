"""The default rollout lead (``RolloutConfig.lead`` / ``forecast.lead`` unset) is ``box_t * time_step`` store steps,
so the targets continue the inputs' cadence; states and checkpoints saved before the lead was recorded ran with the
window's ``time_span`` and keep it: a resume with another lead is refused naming the lead to set, and ``fastload
rollout`` reads such a checkpoint with its old lead (review s11 r2 L1)."""

from __future__ import annotations

import numpy as np
import pytest

from fastload.config import FieldConfig, LoaderConfig, SamplingConfig
from fastload.errors import ConfigError
from fastload.rollout_data import RolloutConfig, RolloutLoader, default_lead, legacy_lead
from profiling.rollout import trained_lead
from tests.fastload.stores import make_per_variable

NT = 40

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sampling(time_step):
    kw = dict(num_tokens=(3, 2, 2), token_size=(1, 2, 3), normalization="none")  # box_t = 3 time points
    return SamplingConfig(fields=(FieldConfig(name="sp", **kw),), batch_size=1, time_step=time_step)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("lead") / "s.zarr"
    truth = make_per_variable(p, nt=NT, ny=9, nx=16, missing_chunk=False, static=False)  # 6-hourly
    return str(p), truth


@pytest.fixture
def path(store):
    return store[0]


def _loader(path, time_step, lead=None):
    return RolloutLoader(path, _sampling(time_step), RolloutConfig(steps=2, batch_size=2, lead=lead),
                         LoaderConfig(workers=1, prefetch=1, seed=3))


@pytest.mark.parametrize("time_step", [1, 2, 6])
def test_the_default_lead_continues_the_inputs_cadence(store, time_step):
    """Inputs at t0 + j * time_step (j < box_t = 3); step k's target (one time token) is the store at
    t0 + k * 3 * time_step: the next point of that cadence, k windows on."""
    path, truth = store
    with _loader(path, time_step) as data:
        assert data.lead == default_lead(data.config) == 3 * time_step
        batch = next(iter(data))
        idx = data.tiles.fields["sp"].index
        for b, t0 in enumerate(batch.t0.tolist()):
            for k in range(2):
                want = truth["sp"][t0 + (k + 1) * 3 * time_step].reshape(-1)[idx]
                np.testing.assert_array_equal(batch.targets[k]["sp"][b].numpy(), want)
        assert batch.lead_hours.tolist() == [3 * time_step * 6.0] * 2  # hours of the store's 6-hourly steps


def test_an_explicit_lead_is_kept(path):
    with _loader(path, 6, lead=5) as data:
        assert data.lead == 5


def test_a_state_saved_before_the_lead_was_recorded_resumes_only_with_its_lead(path):
    with _loader(path, 6) as a:
        next(iter(a))
        state = a.state_dict()
    assert state["lead"] == 18
    with _loader(path, 6, lead=13) as a13:  # a run of the code before: lead unset, its default time_span = 13
        next(iter(a13))
        old = {k: v for k, v in a13.state_dict().items() if k != "lead"}  # as that code saved it
        old["rollout"] = {**old["rollout"], "lead": None}
    with _loader(path, 6) as b, pytest.raises(ConfigError, match=r"saved with lead 13 .* this loader's is 18; .*"
                                                                 r"RolloutConfig\(lead=13\) .*forecast.lead=13"):
        b.load_state_dict(old)
    with _loader(path, 6, lead=13) as c:  # the old default, set explicitly as the refusal says: resumes
        c.load_state_dict(old)
        assert c.state_dict()["batch"] == 1
    # with time_step 1 both defaults agree: an old state resumes as it is
    with _loader(path, 1) as d:
        s1 = {k: v for k, v in d.state_dict().items() if k != "lead"}
    with _loader(path, 1) as e:
        e.load_state_dict(s1)
    with _loader(path, 6) as f, pytest.raises(ConfigError, match=r"lead"):  # a recorded lead is compared
        f.load_state_dict({**state, "lead": 12})


def test_trained_lead_of_a_checkpoint(path):
    s6 = _sampling(6)
    assert trained_lead({"loader": [{"lead": 18}, {"lead": 18}]}, None, s6) == 18
    assert trained_lead({"loader": [{"epoch": 0}]}, None, s6) == s6.time_span == 13  # before the lead was recorded
    assert trained_lead({}, 7, s6) == 7 == legacy_lead({"lead": 7}, s6.to_dict())
