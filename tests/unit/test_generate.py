from __future__ import annotations

import json
import logging

import pytest
from tinyproject import varied_model

from selfimprove.config.methods import GenerateConfig
from selfimprove.config.runtime import SamplerConfig
from selfimprove.core.io import InputError
from selfimprove.methods import generate as gen_mod
from selfimprove.methods.generate import generate, shard_paths
from selfimprove.sampling import factory
from selfimprove.sampling.factory import make_sampler

torch = pytest.importorskip("torch")

QUESTIONS = [
    {"id": f"q{i}", "question": q}
    for i, q in enumerate(
        [
            "Jack has 5 stamps. He buys 1 more. How many stamps does he have?",
            "There are 15 trees. 6 more are planted. How many trees are there?",
            "1 + 2 + 3?",
            "Tom had 12 apples and ate 3. How many are left?",
            "A box holds 8 pencils. How many pencils are in 2 boxes?",
        ]
    )
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Tiny Llama with larger random weights, so samples differ from each other."""
    return varied_model(tmp_path_factory.mktemp("tiny"), seed=2)


@pytest.fixture(scope="session")
def real_sampler(model_dir):
    from selfimprove.sampling.transformers_sampler import TransformersSampler

    return TransformersSampler(model_dir, dtype="float32", batch_size=4, device="cpu")


class Spy:
    """Wraps the real sampler: records each call's index_offset; can fail on the k-th call."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner = inner
        self.offsets: list[int] = []
        self.fail_on_call = fail_on_call

    @property
    def last_stats(self):
        return self.inner.last_stats

    def sample(self, prefix, prompts, params, desc="", index_offset=0):
        self.offsets.append(index_offset)
        if self.fail_on_call == len(self.offsets):
            raise KeyboardInterrupt("killed")
        return self.inner.sample(prefix, prompts, params, desc, index_offset=index_offset)


@pytest.fixture
def spy(monkeypatch, real_sampler):
    """Patch make_sampler; returns a function that installs a new Spy and returns it."""

    def install(fail_on_call: int | None = None) -> Spy:
        s = Spy(real_sampler, fail_on_call)
        monkeypatch.setattr(factory, "sampler_from_params", lambda *a, **k: s)
        return s

    return install


def _cfg(**kw) -> GenerateConfig:
    base = dict(num_paths=3, max_new_tokens=6, n_shots=1, shard_size=2)
    return GenerateConfig(**{**base, **kw})


def test_config_defaults_and_backend_literal():
    assert GenerateConfig().shard_size == 64 and SamplerConfig().backend == "transformers"
    assert SamplerConfig(backend="vllm").backend == "vllm"
    with pytest.raises(ValueError):
        SamplerConfig(backend="tgi")
    with pytest.raises(ValueError):
        GenerateConfig(shard_size=0)
    for name, field in GenerateConfig.model_fields.items():
        assert field.description, name


def test_make_sampler_errors(model_dir):
    with pytest.raises(InputError, match="unknown backend 'tgi'"):
        make_sampler(model_dir, "tgi", "auto", 4)
    with pytest.raises(InputError, match="merged model folder"):
        make_sampler(model_dir, "transformers", "auto", 4, lora_path="adapter")
    with pytest.raises(InputError, match="set sampler.question_level: false"):
        make_sampler(model_dir, "vllm", "auto", 4, question_level=True)


def test_sampler_question_level_comes_from_params(model_dir):
    """sampler.question_level reaches the transformers sampler; with vllm it (and decode_kernel)
    is refused by name, value and fix, every such key at once."""
    from selfimprove.sampling.factory import sampler_from_params

    assert not sampler_from_params(SamplerConfig(), model_dir).question_level
    assert sampler_from_params(SamplerConfig(question_level=True), model_dir).question_level
    with pytest.raises(ValueError, match="not of backend: vllm; set question_level: false"):
        SamplerConfig(backend="vllm", question_level=True)
    with pytest.raises(ValueError, match="question_level: false; decode_kernel: true is a"):
        SamplerConfig(backend="vllm", question_level=True, decode_kernel=True)
    with pytest.raises(InputError, match="set sampler.decode_kernel: false"):
        make_sampler(model_dir, "vllm", "auto", 4, decode_kernel=True)
    with pytest.raises(InputError, match="set sampler.prefix_kernel: false"):
        make_sampler(model_dir, "vllm", "auto", 4, prefix_kernel=True)


def test_shards_match_one_call_and_store_manifests(model_dir, spy, tmp_path):
    s = spy()
    plain, stats = generate(model_dir, QUESTIONS, _cfg(), seed=5)
    assert s.offsets == [0, 2, 4]  # global indices, not positions inside the shard
    assert stats["shards"] == 3 and stats["shards_reused"] == 0
    assert stats["n_questions"] == 5 and stats["n_paths"] == 15
    assert stats["tokens"] == sum(sum(r["n_tokens"]) for r in plain)
    assert stats["decode_s"] > 0
    assert [r["id"] for r in plain] == [q["id"] for q in QUESTIONS]
    assert len({p for r in plain for p in r["paths"]}) > 5  # samples differ

    # same records as one sampler call over all questions (seeds follow the global index)
    one, _ = generate(model_dir, QUESTIONS, _cfg(shard_size=10), seed=5)
    assert one == plain

    shards = tmp_path / "shards"
    stored, _ = generate(model_dir, QUESTIONS, _cfg(), seed=5, shard_dir=shards)
    assert stored == plain
    rec, man = shard_paths(shards, 1)
    manifest = json.loads(man.read_text())
    assert manifest["ids"] == ["q2", "q3"] and manifest["start"] == 2
    assert manifest["settings"]["seed"] == 5 and manifest["settings"]["num_paths"] == 3
    assert [json.loads(line)["id"] for line in rec.read_text().splitlines()] == ["q2", "q3"]


def test_resume_after_interrupted_shard(model_dir, spy, tmp_path, monkeypatch):
    spy()
    full, _ = generate(model_dir, QUESTIONS, _cfg(), seed=1)

    shards = tmp_path / "shards"
    dying = spy(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        generate(model_dir, QUESTIONS, _cfg(), seed=1, shard_dir=shards)
    assert dying.offsets == [0, 2]
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.json", "shard-00000.jsonl"]
    first = shard_paths(shards, 0)[0].read_bytes()

    again = spy()
    resumed, stats = generate(model_dir, QUESTIONS, _cfg(), seed=1, shard_dir=shards)
    assert again.offsets == [2, 4]  # shard 0 was not sampled again
    assert stats["shards_reused"] == 1
    assert resumed == full
    assert shard_paths(shards, 0)[0].read_bytes() == first

    # everything finished: a rerun loads no model at all
    def no_model(*a, **k):
        raise AssertionError("make_sampler must not be called")

    monkeypatch.setattr(factory, "sampler_from_params", no_model)
    done, stats = generate(model_dir, QUESTIONS, _cfg(), seed=1, shard_dir=shards)
    assert done == full and stats["shards_reused"] == 3 and stats["wall_s"] == 0


def test_changed_settings_or_files_are_discarded(model_dir, spy, tmp_path, caplog):
    shards = tmp_path / "shards"
    spy()
    base, _ = generate(model_dir, QUESTIONS, _cfg(), seed=1, shard_dir=shards)

    caplog.set_level(logging.WARNING, logger="selfimprove.methods.generate")
    s = spy()
    hot, _ = generate(model_dir, QUESTIONS, _cfg(temperature=1.3), seed=1, shard_dir=shards)
    assert s.offsets == [0, 2, 4]
    assert "temperature" in caplog.text and "discarded" in caplog.text
    assert hot != base

    # back to the first settings: every shard is resampled again (files now hold T=1.3)
    s = spy()
    assert generate(model_dir, QUESTIONS, _cfg(), seed=1, shard_dir=shards)[0] == base
    assert s.offsets == [0, 2, 4]

    # a hand-edited records file, a missing manifest and a changed question: resampled
    rec0, _ = shard_paths(shards, 0)
    rec0.write_text(rec0.read_text().replace("q0", "qX"))
    shard_paths(shards, 1)[1].unlink()
    changed = [dict(q) for q in QUESTIONS]
    changed[4]["question"] = "What is 2 + 2?"
    caplog.clear()
    s = spy()
    out, stats = generate(model_dir, changed, _cfg(), seed=1, shard_dir=shards)
    assert s.offsets == [0, 2, 4]
    assert "records file missing or changed" in caplog.text
    assert "prompts_sha256" in caplog.text
    assert out[:4] == base[:4] and out[4]["question"] == "What is 2 + 2?"

    # a smaller question list: later shards are removed, the earlier ones reused
    (shards / ".shard-00009.jsonl.abc.tmp").write_text("half")
    s = spy()
    out, stats = generate(model_dir, changed, _cfg(limit=2), seed=1, shard_dir=shards)
    assert s.offsets == [] and stats["shards_reused"] == 1 and out == base[:2]
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.json", "shard-00000.jsonl"]


def test_empty_question_list(model_dir, spy, tmp_path):
    s = spy()
    records, stats = generate(model_dir, [], _cfg(), seed=0, shard_dir=tmp_path / "s")
    assert records == [] and stats["n_paths"] == 0 and s.offsets == []


def test_ray_keys_validated_and_left_out_of_manifests(model_dir):
    assert GenerateConfig().ray_address is None and GenerateConfig().ray_workers == 0
    for bad in ({"ray_address": ""}, {"ray_workers": -1}, {"ray_cpus_per_worker": 0}):
        with pytest.raises(ValueError):
            GenerateConfig(**bad)
    ray_cfg = _cfg(ray_address="auto", ray_workers=4, ray_cpus_per_worker=2)
    # where shards are sampled is not what they hold: a Ray run resumes a local one and back
    assert gen_mod.run_settings(model_dir, ray_cfg, 1, "p") == gen_mod.run_settings(
        model_dir, _cfg(), 1, "p"
    )


def test_missing_ray_is_one_line_and_not_needed_when_all_shards_exist(
    model_dir, spy, tmp_path, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(InputError, match=r"pip install 'selfimprove\[ray\]'$") as e:
        generate(model_dir, QUESTIONS, _cfg(ray_address="127.0.0.1:6379"), seed=3)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # params null: the environment decides
    with pytest.raises(InputError, match="Ray is not installed"):
        generate(model_dir, QUESTIONS, _cfg(), seed=3)

    # every shard already on disk: nothing to sample, so Ray is never imported
    monkeypatch.delenv("RAY_ADDRESS")
    spy()
    shards = tmp_path / "shards"
    local, _ = generate(model_dir, QUESTIONS, _cfg(), seed=3, shard_dir=shards)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    again, stats = generate(model_dir, QUESTIONS, _cfg(), seed=3, shard_dir=shards)
    assert again == local and stats["shards_reused"] == 3 and "ray" not in stats
