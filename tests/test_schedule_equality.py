"""Schedule compares by the values its config determines (the abar table compared exactly)."""

from __future__ import annotations

from bdia import Schedule

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1)


def test_equal_when_config_derived_values_are():
    a = Schedule.from_config(SD)
    assert a == Schedule.from_config({**SD, "clip_sample": True})  # a key Schedule does not use
    assert hash(a) == hash(Schedule.from_config(dict(SD)))
    assert len({a, Schedule.from_config(dict(SD))}) == 1


def test_differs_when_any_derived_value_does():
    a = Schedule.from_config(SD)
    for change in (
        dict(beta_end=0.0121),
        dict(set_alpha_to_one=True),
        dict(steps_offset=0),
        dict(timestep_spacing="trailing"),
        dict(prediction_type="v_prediction"),
        dict(rescale_betas_zero_snr=True),
    ):
        b = Schedule.from_config({**SD, **change})
        assert a != b and not a == b, change
    assert a != "not a schedule" and a != SD
