"""params.yaml validation: the shipped file is valid; every problem is reported at once.

(Defaults, comments and descriptions: tests/unit/test_defaults.py.)
"""

from pathlib import Path

import pytest
import yaml

from selfimprove.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert list(params.rounds) == ["r1", "r2"]
    assert params.rounds["r2"].prev == "r1"


def test_all_problems_reported_at_once_with_fix():
    raw = _raw()
    raw["generate"]["temprature"] = 0.9
    raw["generate"]["num_paths"] = "eight"
    raw["finetune"]["lora"]["rank"] = 8
    raw["bogus_section"] = {}
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "generate.temprature: unknown key" in msg and "did you mean 'temperature'" in msg
    assert "generate.num_paths" in msg and "'eight'" in msg
    assert "finetune.lora.rank: unknown key" in msg
    assert "bogus_section: unknown key" in msg


def test_cross_section_checks():
    raw = _raw()
    raw["rounds"]["r3"] = {"prev": "r7"}
    raw["warmstart"]["enabled"] = True
    raw["data"]["seed_set"] = None
    raw["evaluate"]["sets"] = ["nope"]
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "rounds.r3.prev: 'r7' is not a round" in msg
    assert "warmstart.enabled" in msg and "data.seed_set" in msg
    assert "evaluate.sets" in msg


def test_finetune_processes_checks():
    """finetune.processes splits batch_size; the warm start and meta-skill steps train in one
    process: each problem is named with its fix, all at once."""
    raw = _raw()
    raw["finetune"] |= {"processes": 3}
    raw["warmstart"]["finetune"] = {"processes": 2}
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "batch_size 8 does not split over processes 3" in msg
    assert "warmstart.finetune" in msg and "set processes: 1" in msg
    raw = _raw()
    raw["finetune"] |= {"processes": 2}
    assert parse_params(raw).finetune.processes == 2


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_scheduler_names_are_transformers_scheduler_types():
    """The names read from transformers' source (without importing it) are its SchedulerType."""
    from transformers.trainer_utils import SchedulerType

    from selfimprove.config.base import UNSUPPORTED_SCHEDULERS, scheduler_names

    assert list(scheduler_names()) == [s.value for s in SchedulerType]
    assert set(UNSUPPORTED_SCHEDULERS) <= set(scheduler_names())


def test_moved_sampler_keys_name_their_new_key():
    """generate/evaluate/meta_skill's old sampler keys are errors that name sampler.<key>."""
    from selfimprove.config.runtime import SAMPLER_MOVED_KEYS as MOVED_KEYS

    raw: dict = {}
    for (section, key), _ in MOVED_KEYS.items():
        raw.setdefault(section, {})[key] = "vllm" if key == "backend" else 8
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    msg = str(e.value)
    for (section, key), new in MOVED_KEYS.items():
        assert f"{section}.{key}: moved to {new}" in msg
    assert parse_params({"sampler": {"backend": "vllm", "batch_size": 8}}).sampler.batch_size == 8
