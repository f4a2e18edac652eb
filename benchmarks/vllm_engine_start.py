"""vLLM engine start-up on CPU, eager vs compiled (``generate.vllm_engine: {enforce_eager: true}``).

Run in the vLLM environment, each mode with its own empty compile cache (a warm cache hides the
torch.compile time that a fresh machine pays)::

    for mode in eager compiled; do VLLM_CACHE_ROOT=$(mktemp -d) OMP_NUM_THREADS=1 \\
        .venv-vllm/bin/python benchmarks/vllm_engine_start.py $mode; done

Prints one JSON line per run: start-up seconds and the seconds of a small greedy request.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "eager"
    if mode not in ("eager", "compiled"):
        sys.exit("usage: vllm_engine_start.py eager|compiled")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from selfimprove.sampling.base import SamplingParams
    from selfimprove.sampling.vllm_sampler import VLLMSampler
    from selfimprove.tiny import make_tiny_model

    model = make_tiny_model(os.path.join(tempfile.mkdtemp(), "model"), hidden_size=256)
    extra = {"enforce_eager": True} if mode == "eager" else {}
    t = time.perf_counter()
    sampler = VLLMSampler(model, dtype="float32", max_model_len=512, **extra)
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    sampler.sample("Q: 1+1?\nA: 2.\n\n", ["Q: 2+2?\nA:"] * 4, SamplingParams(max_new_tokens=16))
    sample_s = time.perf_counter() - t
    sampler.close()
    print(json.dumps({"mode": mode, "start_s": round(start_s, 1), "sample_s": round(sample_s, 2)}))


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is required
    main()
