"""config.profile_steps: parsing, validation, and a trace that holds exactly the chosen steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.profiler import ProfileData

from sora_jax import config as config_lib
from sora_jax.errors import SoraError
from sora_jax.training.profiling import StepProfiler


@pytest.mark.parametrize("text, parsed", [("", None), ("  ", None), ("10:15", (10, 15)), ("0:1", (0, 1))])
def test_parse_profile_steps(text, parsed):
    assert config_lib.parse_profile_steps(text) == parsed


@pytest.mark.parametrize("text", ["10", "15:10", "5:5", "-1:3", "a:b", "1:2:3", "10-15"])
def test_bad_profile_steps_raise_one_line(text):
    with pytest.raises(SoraError, match="profile_steps") as info:
        config_lib.parse_profile_steps(text)
    assert "\n" not in str(info.value)


def test_validate_refuses_a_range_past_the_run():
    config = config_lib.base_config()
    config.num_train_steps, config.profile_steps = 20, "10:25"
    with pytest.raises(SoraError, match="num_train_steps"):
        config_lib.validate(config)
    config.profile_steps = "10:20"
    config_lib.validate(config)


def _traced_steps(directory) -> list[int]:
    files = list(directory.glob("plugins/profile/*/*.xplane.pb"))
    assert len(files) == 1
    steps = []
    for plane in ProfileData.from_file(str(files[0])).planes:
        for line in plane.lines:
            steps += [dict(e.stats)["step_num"] for e in line.events if e.name == "train"]
    return sorted(steps)


def test_trace_holds_steps_after_start_up_to_end(tmp_path):
    step_fn = jax.jit(lambda x: jnp.sin(x) * 2)
    x = jnp.ones(256)
    with StepProfiler((2, 4), tmp_path / "profile") as profiler:
        for done in range(6):
            profiler.before_step(done)
            x = step_fn(x)
            profiler.after_step(done + 1, x)
    assert _traced_steps(tmp_path / "profile") == [3, 4]


def test_a_run_ending_inside_the_range_still_writes_its_trace(tmp_path):
    with StepProfiler((0, 10), tmp_path / "profile") as profiler:
        for done in range(2):
            profiler.before_step(done)
            profiler.after_step(done + 1, jnp.zeros(()))
    assert _traced_steps(tmp_path / "profile") == [1, 2]


def test_no_range_writes_nothing(tmp_path):
    with StepProfiler(None, tmp_path / "profile") as profiler:
        profiler.before_step(0)
        profiler.after_step(1, jnp.zeros(()))
    assert not (tmp_path / "profile").exists()
