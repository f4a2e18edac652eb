"""A decode-step attention kernel over the rows' tails (CPU, bf16, AVX-512), built at first use.

In a decode step each row's few grouped queries (the query heads of one kv head) attend to
that row's tail; torch's flash kernel spends most of that time on per-(row, kv head) set-up
(docs/sampler-speed.md). :func:`attend` does the same product in one pass per (row, kv head):
scores against every key (fp32 accumulation), the softmax with a vectorized exp, then the
weighted values, and returns the log-sum-exp the cascade's exact merge needs, like
``_scaled_dot_product_flash_attention_for_cpu``. Its results equal flash's up to float rounding
(not bit for bit), so it is a sampler setting (``sampler.decode_kernel``): ``auto`` (the
default) uses it wherever the model's decode steps fit it and it builds (:func:`choose`).

It is compiled with torch's own ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and
ninja; ~25 s once, then cached in ``~/.cache/torch_extensions``), in a child interpreter, and
imported from there; a finished build leaves a stamp, so later processes import the file
without the child (:func:`_built`). :func:`unavailable` says why it cannot run here, if it cannot.
"""

from __future__ import annotations

import functools
from typing import Any

#: the kernel's shapes: head_dim and the most queries per (row, kv head) it takes
HEAD_DIM = 64
MAX_GROUP = 8

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cmath>
#include <limits>
#include <vector>

namespace {
constexpr int D = 64;
constexpr int G_MAX = 8;
constexpr int QB = 16;  // queries per block of the prefix attention

inline __m512 load_bf16(const at::BFloat16* p) {  // 16 bf16 -> 16 fp32
  __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}

// e^x for x <= 0 (a score minus the row's max); 0 below -87, so masked (-inf) columns weigh 0
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 small = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.69314718055994531f));
  __m512 p = _mm512_set1_ps(1.f / 720);  // e^f, |f| <= ln2/2: Taylor to f^6 (rel. err < 2e-7)
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~small), p, n);
}
}  // namespace

// q [B, H, G, 64] bf16; k, v [B, H, T, 64] bf16 (any strides but the last); add [B, T] fp32
// (0 or -inf) or empty: (out [B, H, G, 64] bf16, lse [B, H, G] fp32)
std::vector<torch::Tensor> decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                            torch::Tensor add, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
              v.scalar_type() == at::kBFloat16, "decode_attention: bf16 only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: 4-d tensors");
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), T = k.size(2);
  TORCH_CHECK(q.size(3) == D && k.size(3) == D && v.size(3) == D, "decode_attention: head_dim 64");
  TORCH_CHECK(G >= 1 && G <= G_MAX, "decode_attention: 1-8 queries per (row, kv head)");
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && v.sizes() == k.sizes(),
              "decode_attention: shapes");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: head_dim contiguous");
  const bool masked = add.defined() && add.numel() > 0;
  if (masked) {
    TORCH_CHECK(add.scalar_type() == at::kFloat && add.is_contiguous() && add.size(0) == B &&
                add.size(1) == T, "decode_attention: add is [B, T] fp32, contiguous");
  }
  q = q.contiguous();
  auto out = torch::empty({B, H, G, D}, q.options());
  auto lse = torch::empty({B, H, G}, q.options().dtype(at::kFloat));
  const at::BFloat16* qp = q.data_ptr<at::BFloat16>();
  const at::BFloat16* kp = k.data_ptr<at::BFloat16>();
  const at::BFloat16* vp = v.data_ptr<at::BFloat16>();
  const float* ap = masked ? add.data_ptr<float>() : nullptr;
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  float* lp = lse.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const float sc = static_cast<float>(scale);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(static_cast<size_t>(G * T));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const at::BFloat16* kb = kp + b * ks0 + h * ks1;
      const at::BFloat16* vb = vp + b * vs0 + h * vs1;
      const float* arow = masked ? ap + b * T : nullptr;
      __m512 qv[G_MAX][4];
      float mx[G_MAX], sum[G_MAX];
      for (int64_t g = 0; g < G; ++g) {
        mx[g] = neg_inf;
        for (int c = 0; c < 4; ++c)
          qv[g][c] = _mm512_mul_ps(load_bf16(qp + (bh * G + g) * D + 16 * c), _mm512_set1_ps(sc));
      }
      for (int64_t t = 0; t < T; ++t) {  // scores
        const float a = arow ? arow[t] : 0.f;
        if (a == neg_inf) {
          for (int64_t g = 0; g < G; ++g) s[g * T + t] = neg_inf;
          continue;
        }
        const at::BFloat16* kr = kb + t * ks2;
        const __m512 k0 = load_bf16(kr), k1 = load_bf16(kr + 16), k2 = load_bf16(kr + 32),
                     k3 = load_bf16(kr + 48);
        for (int64_t g = 0; g < G; ++g) {
          __m512 acc = _mm512_mul_ps(qv[g][0], k0);
          acc = _mm512_fmadd_ps(qv[g][1], k1, acc);
          acc = _mm512_fmadd_ps(qv[g][2], k2, acc);
          acc = _mm512_fmadd_ps(qv[g][3], k3, acc);
          const float x = _mm512_reduce_add_ps(acc) + a;
          s[g * T + t] = x;
          mx[g] = x > mx[g] ? x : mx[g];
        }
      }
      for (int64_t g = 0; g < G; ++g) {  // softmax weights (unnormalized) and their sum
        float* sg = s.data() + g * T;
        const __m512 m = _mm512_set1_ps(mx[g]);
        __m512 total = _mm512_setzero_ps();
        int64_t t = 0;
        for (; t + 16 <= T; t += 16) {
          const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sg + t), m));
          _mm512_storeu_ps(sg + t, e);
          total = _mm512_add_ps(total, e);
        }
        if (t < T) {
          const __mmask16 km = static_cast<__mmask16>((1u << (T - t)) - 1);
          const __m512 e = _mm512_maskz_mov_ps(
              km, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(km, sg + t), m)));
          _mm512_mask_storeu_ps(sg + t, km, e);
          total = _mm512_add_ps(total, e);
        }
        sum[g] = _mm512_reduce_add_ps(total);
      }
      __m512 acc[G_MAX][4];
      for (int64_t g = 0; g < G; ++g)
        for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_setzero_ps();
      for (int64_t t = 0; t < T; ++t) {  // weighted values
        if (arow && arow[t] == neg_inf) continue;
        const at::BFloat16* vr = vb + t * vs2;
        const __m512 v0 = load_bf16(vr), v1 = load_bf16(vr + 16), v2 = load_bf16(vr + 32),
                     v3 = load_bf16(vr + 48);
        for (int64_t g = 0; g < G; ++g) {
          const __m512 p = _mm512_set1_ps(s[g * T + t]);
          acc[g][0] = _mm512_fmadd_ps(p, v0, acc[g][0]);
          acc[g][1] = _mm512_fmadd_ps(p, v1, acc[g][1]);
          acc[g][2] = _mm512_fmadd_ps(p, v2, acc[g][2]);
          acc[g][3] = _mm512_fmadd_ps(p, v3, acc[g][3]);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const bool any = sum[g] > 0.f;  // a row with every column masked: zeros, lse -inf
        const __m512 inv = _mm512_set1_ps(any ? 1.f / sum[g] : 0.f);
        float row[D];
        for (int c = 0; c < 4; ++c) _mm512_storeu_ps(row + 16 * c, _mm512_mul_ps(acc[g][c], inv));
        at::BFloat16* o = op + (bh * G + g) * D;
        for (int d = 0; d < D; ++d) o[d] = at::BFloat16(row[d]);
        lp[bh * G + g] = any ? mx[g] + std::log(sum[g]) : neg_inf;
      }
    }
  });
  return {out, lse};
}

// The shared prefix's part of the cascade: every query of a kv head against the same P keys, a
// GEMM-like product. The prefix is packed once per sampler call (pack_prefix) into the layouts
// of AVX512-BF16's dot product (vdpbf16ps: pairs of bf16, fp32 accumulation); scores, softmax
// and the weighted values for 16 queries at a time. Needs a CPU with AVX512-BF16.
// k, v [H, P, 64] bf16 -> kp [H, NB, 32, 16, 2] (key block, dim pair, key, pair) and
// vp [H, NB*8, 64, 2] (key pair, dim, pair), zero-padded to NB*16 keys
std::vector<torch::Tensor> pack_prefix(torch::Tensor k, torch::Tensor v) {
  TORCH_CHECK(k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16, "bf16");
  k = k.contiguous(); v = v.contiguous();
  const int64_t H = k.size(0), P = k.size(1), NB = (P + 15) / 16;
  auto kp = torch::zeros({H, NB, 32, 16, 2}, k.options());
  auto vp = torch::zeros({H, NB * 8, D, 2}, v.options());
  const at::BFloat16* ks = k.data_ptr<at::BFloat16>();
  const at::BFloat16* vs = v.data_ptr<at::BFloat16>();
  at::BFloat16* kd = kp.data_ptr<at::BFloat16>();
  at::BFloat16* vd = vp.data_ptr<at::BFloat16>();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < P; ++t)
      for (int d = 0; d < D; ++d) {
        const int64_t b = t / 16, i = t % 16, j = d / 2, e = d % 2;
        kd[(((h * NB + b) * 32 + j) * 16 + i) * 2 + e] = ks[(h * P + t) * D + d];
        vd[((h * NB * 8 + t / 2) * D + d) * 2 + t % 2] = vs[(h * P + t) * D + d];
      }
  return {kp, vp};
}

// 16 queries (or nq_any of them, NQ 0) of kv head h against the packed prefix
template <int NQ>
__attribute__((target("avx512bf16")))
inline void block(int64_t nq_any, const at::BFloat16* qh, const at::BFloat16* kd,
    const at::BFloat16* vd, at::BFloat16* od, std::vector<float>& S,
    std::vector<at::BFloat16>& Pb, int64_t h, int64_t M, int64_t m0, int64_t NB, int64_t P,
    int64_t P16, float sc, float* mx, float* sum) {
  const int32_t* q32 = reinterpret_cast<const int32_t*>(qh);  // dim pairs
  const int64_t nq = NQ > 0 ? NQ : nq_any;  // a compile-time count unrolls the loops
  // scores
  for (int64_t b = 0; b < NB; ++b) {
    __m512 acc[QB];
    for (int i = 0; i < QB; ++i) acc[i] = _mm512_setzero_ps();
    const at::BFloat16* kb = kd + ((h * NB + b) * 32) * 32;
    for (int j = 0; j < 32; ++j) {
      const __m512bh kz = (__m512bh)_mm512_loadu_si512(kb + j * 32);
      for (int64_t i = 0; i < nq; ++i)
        acc[i] = _mm512_dpbf16_ps(acc[i], kz, (__m512bh)_mm512_set1_epi32(q32[i * 32 + j]));
    }
    const int64_t left = P - b * 16;
    const __mmask16 km = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < nq; ++i)
      _mm512_storeu_ps(S.data() + i * P16 + b * 16,
                       _mm512_mask_mov_ps(ninf, km, _mm512_mul_ps(acc[i], _mm512_set1_ps(sc))));
  }
  // softmax (unnormalized) -> bf16 weights
  for (int64_t i = 0; i < nq; ++i) {
    float* s = S.data() + i * P16;
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < P16; t += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + t));
    mx[i] = _mm512_reduce_max_ps(m);
    const __m512 mm = _mm512_set1_ps(mx[i]);
    __m512 tot = _mm512_setzero_ps();
    at::BFloat16* pb = Pb.data() + i * P16;
    for (int64_t t = 0; t < P16; t += 16) {
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), mm));
      tot = _mm512_add_ps(tot, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + t), (__m256i)_mm512_cvtneps_pbh(e));
    }
    sum[i] = _mm512_reduce_add_ps(tot);
  }
  // weighted values
  for (int c = 0; c < 4; ++c) {
    __m512 acc[QB];
    for (int i = 0; i < QB; ++i) acc[i] = _mm512_setzero_ps();
    const at::BFloat16* vh = vd + (h * NB * 8) * D * 2 + c * 32;
    for (int64_t kp2 = 0; kp2 < NB * 8; ++kp2) {
      const __m512bh vz = (__m512bh)_mm512_loadu_si512(vh + kp2 * D * 2);
      for (int64_t i = 0; i < nq; ++i) {
        const int32_t pw = reinterpret_cast<const int32_t*>(Pb.data() + i * P16)[kp2];
        acc[i] = _mm512_dpbf16_ps(acc[i], vz, (__m512bh)_mm512_set1_epi32(pw));
      }
    }
    for (int64_t i = 0; i < nq; ++i) {
      const __m512 r = _mm512_mul_ps(acc[i], _mm512_set1_ps(1.f / sum[i]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(od + (h * M + m0 + i) * D + c * 16),
                          (__m256i)_mm512_cvtneps_pbh(r));
    }
  }
}

// q [H, M, 64] bf16; kp, vp from pack_prefix of P keys: (out [H, M, 64] bf16, lse [H, M] fp32)
__attribute__((target("avx512bf16")))
std::vector<torch::Tensor> prefix_attention(torch::Tensor q, torch::Tensor kp, torch::Tensor vp,
                                            int64_t P, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && q.dim() == 3 && q.size(2) == D, "q");
  q = q.contiguous();
  const int64_t H = q.size(0), M = q.size(1), NB = kp.size(1), P16 = NB * 16;
  TORCH_CHECK(kp.size(0) == H && (P + 15) / 16 == NB, "kp");
  auto out = torch::empty({H, M, D}, q.options());
  auto lse = torch::empty({H, M}, q.options().dtype(at::kFloat));
  const at::BFloat16* qd = q.data_ptr<at::BFloat16>();
  const at::BFloat16* kd = kp.data_ptr<at::BFloat16>();
  const at::BFloat16* vd = vp.data_ptr<at::BFloat16>();
  at::BFloat16* od = out.data_ptr<at::BFloat16>();
  float* ld = lse.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t MB = (M + QB - 1) / QB;
  at::parallel_for(0, H * MB, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> S(static_cast<size_t>(QB * P16));
    std::vector<at::BFloat16> Pb(static_cast<size_t>(QB * P16));
    for (int64_t w = begin; w < end; ++w) {
      const int64_t h = w / MB, m0 = (w % MB) * QB, nq = std::min<int64_t>(QB, M - m0);
      const at::BFloat16* qh = qd + (h * M + m0) * D;
      float mx[QB], sum[QB];
      if (nq == QB) block<QB>(nq, qh, kd, vd, od, S, Pb, h, M, m0, NB, P, P16, sc, mx, sum);
      else block<0>(nq, qh, kd, vd, od, S, Pb, h, M, m0, NB, P, P16, sc, mx, sum);
      for (int64_t i = 0; i < nq; ++i) ld[h * M + m0 + i] = mx[i] + std::log(sum[i]);
    }
  });
  return {out, lse};
}
"""

_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma"]
_NAME = "selfimprove_decode_attention"
#: seconds a build may take (~25 s here) before it is given up with the reason
BUILD_TIMEOUT_S = 600


def build() -> str:
    """Build the extension (or find it built, in torch's extensions cache) in this process and
    return its file. :func:`_module` runs this in a fresh interpreter: torch's build helpers
    import setuptools, whose distutils hack fails in a process that already imported the
    standard library's distutils (a test session, another package).

    Builders take turns on an ``flock`` (the kernel releases it when a builder dies). Torch's
    own lock is a file it deletes when its build ends: a builder killed mid-build (kill -9 of a
    `dvc repro`) leaves it behind and every later build would wait for it forever. Holding the
    flock, no other builder of ours is inside torch's, so such a file is stale and goes.
    """
    import fcntl
    import os
    import shutil
    import warnings

    if shutil.which("ninja") is None:  # the ninja wheel's binary, when its venv is not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    with warnings.catch_warnings():
        # torch's build helpers import distutils (deprecated in Python 3.11), not our call
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils.cpp_extension import _get_build_directory, load_inline

        folder = _get_build_directory(_NAME, verbose=False)
        with open(os.path.join(os.path.dirname(folder), f"{_NAME}.flock"), "a") as turn:
            fcntl.flock(turn, fcntl.LOCK_EX)  # waits while another builder builds
            try:
                os.remove(os.path.join(folder, "lock"))  # left by a builder that was killed
            except FileNotFoundError:
                pass
            module = load_inline(
                _NAME,
                cpp_sources=_SOURCE,
                functions=["decode_attention", "pack_prefix", "prefix_attention"],
                extra_cflags=_FLAGS,
            )
            _write_stamp(module.__file__)  # still holding the turn: no build in between
    return module.__file__


def _stamp() -> Any:
    """The file that records a finished build of this source: in the extensions cache
    (``TORCH_EXTENSIONS_DIR`` or torch's default), named by a hash of the source, the flags,
    torch's and Python's versions."""
    import hashlib
    import os
    import sys
    from pathlib import Path

    import torch
    from torch import _appdirs  # where torch's extensions cache lives by default

    key = "\n".join([_SOURCE, *_FLAGS, torch.__version__, sys.version])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or _appdirs.user_cache_dir("torch_extensions")
    return Path(root) / f"{_NAME}.{digest}.json"


def _file_id(path: str) -> list[int]:
    import os

    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _write_stamp(path: str) -> None:
    """Record ``path`` as this source's finished build; the stamp only saves the next process
    a child interpreter, so a stamp that cannot be written is no error."""
    import json
    import os

    try:
        stamp = _stamp()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": path, "file": _file_id(path)}))
        os.replace(tmp, stamp)
    except Exception:  # noqa: BLE001 - an optimization only
        pass


def _built() -> str | None:
    """The extension file a finished build of this very source left, if it is still the file
    that build wrote (same size and mtime: no build of other code replaced it), else None."""
    import json

    try:
        got = json.loads(_stamp().read_text())
        return got["path"] if _file_id(got["path"]) == got["file"] else None
    except Exception:  # noqa: BLE001 - no stamp, a broken one, no cache dir: build as before
        return None


@functools.cache
def _module() -> Any:
    """The built extension, imported here without torch's build helpers (see :func:`build`):
    the file a finished build of this source recorded (:func:`_built`), else built (or found
    built by torch) in a child interpreter."""
    import subprocess
    import sys

    path = _built()  # built before: import it without a child interpreter (~3 s saved)
    if path is not None:
        return _load(path)
    code = "from selfimprove.sampling.decode_kernel import build; print(build())"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"building {_NAME} took over {BUILD_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"building {_NAME} failed: {last[:300]}")
    return _load(proc.stdout.strip().splitlines()[-1])


def _load(path: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def unavailable() -> str | None:
    """Why the kernel cannot run on this machine (None: it can; building it if need be)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    if not cap.startswith("AVX512"):
        return f"it needs an AVX-512 CPU (torch reports {cap})"
    try:
        _module()
    except Exception as e:  # no compiler, no ninja, a build error: say which
        return f"it could not be built ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None


def attend(query: Any, key: Any, value: Any, add: Any, scale: float) -> tuple[Any, Any]:
    """(out [B, H, G, 64] bf16, lse [B, H, G] fp32) of ``query`` [B, H, G, 64] over ``key`` /
    ``value`` [B, H, T, 64] (strided views are fine) with ``add`` [B, T] fp32 (0 / -inf) or
    None; what ``_scaled_dot_product_flash_attention_for_cpu`` returns, up to rounding."""
    import torch

    if add is None:
        add = torch.empty(0, dtype=torch.float32)
    return tuple(_module().decode_attention(query, key, value, add, scale))


@functools.cache
def prefix_unavailable() -> str | None:
    """Why the shared-prefix kernel (:func:`attend_prefix`) cannot run here (None: it can): it
    needs AVX512-BF16's dot product besides what :func:`unavailable` checks."""
    import torch

    if not torch.cpu._is_avx512_bf16_supported():
        return "it needs a CPU with AVX512-BF16 (vdpbf16ps)"
    return unavailable()


def pack_prefix(prefix_kv: list) -> list:
    """Each layer's shared-prefix (keys, values) [Hkv, P, 64] bf16 in :func:`attend_prefix`'s
    layouts (pairs of bf16 for the dot product, zero-padded to 16 keys): ``(kp, vp, P)``."""
    module = _module()
    return [(*module.pack_prefix(k, v), k.shape[1]) for k, v in prefix_kv]


def attend_prefix(query: Any, packed: tuple, scale: float) -> tuple[Any, Any]:
    """(out [H, M, 64] bf16, lse [H, M] fp32) of ``query`` [H, M, 64] bf16 (every query of a kv
    head) over one layer's packed prefix (:func:`pack_prefix`); what
    ``_scaled_dot_product_flash_attention_for_cpu`` returns for them, up to rounding."""
    kp, vp, p = packed
    return tuple(_module().prefix_attention(query, kp, vp, p, scale))


def model_fits(config: Any, dtype: Any, device: str) -> str | None:
    """Why a model's decode steps never fit the kernel (None: they do): CPU, bf16, head_dim 64,
    at most 8 query heads per kv head. Read from the model's config, nothing is built."""
    import torch

    heads = getattr(config, "num_attention_heads", None) or 1
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if device != "cpu":
        return f"it runs on CPU only, not on {device}"
    if dtype != torch.bfloat16:
        return f"the model samples in {str(dtype).removeprefix('torch.')}, the kernel is bf16"
    if head_dim != HEAD_DIM or heads // kv > MAX_GROUP:
        return (f"the model's head_dim is {head_dim} with {heads // kv} query heads per kv "
                f"head; the kernel takes head_dim {HEAD_DIM}, at most {MAX_GROUP}")
    return None


def choose(setting: bool | str, config: Any, dtype: Any, device: str) -> tuple[bool, str]:
    """Whether a sampler decodes through the kernel, and why: ``setting`` is
    ``sampler.decode_kernel`` (true, false or auto). ``auto`` uses it where the model fits it
    (:func:`model_fits`) and it builds here (:func:`unavailable`), else torch's flash kernel;
    ``true`` where it cannot run at all is an :class:`InputError` naming the fix (a float32
    model with ``true`` keeps flash: its steps never fit)."""
    from selfimprove.core.io import InputError

    if setting is False:
        return False, "sampler.decode_kernel: false"
    if setting is True:
        why = f"it runs on CPU only, not on {device}" if device != "cpu" else unavailable()
        if why:
            raise InputError(
                f"decode_kernel=True (sampler.decode_kernel): {why}; set "
                "sampler.decode_kernel: auto (use it where it can run) or false (torch's "
                "flash kernel)"
            )
        return True, "sampler.decode_kernel: true"
    if setting != "auto":
        raise InputError(f"decode_kernel={setting!r}: use true, false or auto")
    why = model_fits(config, dtype, device) or unavailable()
    if why:
        return False, f"sampler.decode_kernel: auto, off: {why}"
    return True, "sampler.decode_kernel: auto, on (AVX-512, bf16, head_dim 64)"


def choose_prefix(setting: bool | str, config: Any, dtype: Any, device: str) -> tuple[bool, str]:
    """Whether a sampler computes the shared prefix's attention with :func:`attend_prefix`, and
    why: ``setting`` is ``sampler.prefix_kernel``, decided as :func:`choose` decides the decode
    kernel, except that ``true`` also needs the model to fit (bf16, head_dim 64) and the CPU to
    have AVX512-BF16 (:func:`prefix_unavailable`)."""
    from selfimprove.core.io import InputError

    if setting not in (True, False, "auto"):
        raise InputError(f"prefix_kernel={setting!r}: use true, false or auto")
    if setting is False:
        return False, "sampler.prefix_kernel: false"
    why = model_fits(config, dtype, device) or prefix_unavailable()
    if why and setting is True:
        raise InputError(
            f"prefix_kernel=True (sampler.prefix_kernel): {why}; set "
            "sampler.prefix_kernel: auto (where it can run) or false (torch's flash)"
        )
    if why:
        return False, f"sampler.prefix_kernel: auto, off: {why}"
    return True, f"sampler.prefix_kernel: {setting}, on (AVX512-BF16)"


def fits(query: Any) -> bool:
    """Whether a query block [B, H, G, D] is one the kernel takes (bf16, D = 64, G <= 8)."""
    import torch

    return (
        query.dtype == torch.bfloat16
        and query.shape[-1] == HEAD_DIM
        and query.shape[2] <= MAX_GROUP
        and query.device.type == "cpu"
    )
