#include "backend/cpu/kernels.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "backend/cpu/vmath.h"
#include "core/error.h"
#include "core/threads.h"

namespace llmc::cpu {

void blas_init() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

BlasThreadsScope::BlasThreadsScope(bool enable) : on_(enable && num_threads() > 1) {
  blas_init();
  if (on_) openblas_set_num_threads(num_threads());
}

BlasThreadsScope::~BlasThreadsScope() {
  if (on_) openblas_set_num_threads(1);
}

void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, double eps, float* y) {
  const float feps = float(eps);
  parallel_for(0, size_t(rows), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      const double ss = sum_squares(xr, dim);
      // HF: variance in fp32, then x * rsqrt(variance + eps), then weight * (...)
      const float var = float(ss / double(dim));
      const float inv = float(1.0 / std::sqrt(double(var + feps)));
      for (int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
  });
}

std::vector<float> rope_inv_freq(const RopeConfig& rope, int head_dim) {
  if (head_dim <= 0 || head_dim % 2) fail("rope: head_dim ", head_dim, " must be even and positive");
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  const float base = float(rope.theta);
  for (int i = 0; i < half; ++i) {
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
    const float e = float(2 * i) / float(head_dim);
    const float p = float(std::pow(double(base), double(e)));
    inv[i] = 1.0f / p;
  }
  if (rope.type == "default") return inv;
  if (rope.type == "linear") {
    for (float& f : inv) f = f / float(rope.factor);
    return inv;
  }
  if (rope.type == "llama3") {
    // transformers _compute_llama3_parameters, fp32 tensors with Python-float scalars.
    const float factor = float(rope.factor);
    const double old_ctx = rope.original_max_position;
    const float low_wavelen = float(old_ctx / rope.low_freq_factor);
    const float high_wavelen = float(old_ctx / rope.high_freq_factor);
    const float two_pi = float(2 * M_PI);
    for (float& f : inv) {
      const float wavelen = (1.0f / f) * two_pi;
      float llama = wavelen > low_wavelen ? f / factor : f;
      const float smooth = ((1.0f / wavelen) * float(old_ctx) - float(rope.low_freq_factor)) /
                           float(rope.high_freq_factor - rope.low_freq_factor);
      const float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      if (medium) llama = smoothed;
      f = llama;
    }
    return inv;
  }
  fail("rope: unsupported rope_type \"", rope.type, "\" (supported: default, linear, llama3)");
}

void rope_tables(const std::vector<float>& inv_freq, int npos, std::vector<float>* cos,
                 std::vector<float>* sin) {
  const size_t half = inv_freq.size();
  cos->resize(size_t(npos) * half);
  sin->resize(size_t(npos) * half);
  for (int p = 0; p < npos; ++p) {
    for (size_t i = 0; i < half; ++i) {
      const float a = float(p) * inv_freq[i];  // fp32 product, as the HF matmul
      (*cos)[size_t(p) * half + i] = float(std::cos(double(a)));
      (*sin)[size_t(p) * half + i] = float(std::sin(double(a)));
    }
  }
}

void rope_apply(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq, int pos0,
                const float* cos, const float* sin) {
  const int half = hd / 2;
  parallel_for(0, size_t(rows), 32, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const int pos = pos0 + int(r % size_t(seq));
      const float* c = cos + size_t(pos) * half;
      const float* s = sin + size_t(pos) * half;
      for (int h = 0; h < heads; ++h) {
        float* a = x + r * stride + size_t(h) * hd;
        float* b = a + half;
        for (int i = 0; i < half; ++i) {
          const float x1 = a[i], x2 = b[i];
          a[i] = x1 * c[i] - x2 * s[i];
          b[i] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  });
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  parallel_for(0, size_t(n), 1 << 14, [&](size_t b, size_t e) {
    silu_mul_range(gate + b, up + b, out + b, int64_t(e - b));
  });
}

void add_inplace(float* y, const float* x, int64_t n) {
  parallel_for(0, size_t(n), 1 << 15, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) y[i] += x[i];
  });
}

void causal_attention(const float* q, const float* k, const float* v, int batch, int seq,
                      int pos0, int heads, int kv_heads, int hd, int64_t kv_batch_stride,
                      float* out) {
  LLMC_CHECK(heads % kv_heads == 0);
  blas_init();
  constexpr int kQChunk = 64;
  const int group = heads / kv_heads;
  const int64_t qd = int64_t(heads) * hd, kvd = int64_t(kv_heads) * hd;
  const int nchunks = (seq + kQChunk - 1) / kQChunk;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const size_t tasks = size_t(batch) * heads * nchunks;
  parallel_for(0, tasks, 1, [&](size_t t0, size_t t1) {
    thread_local std::vector<float> scores;
    for (size_t t = t0; t < t1; ++t) {
      const int c = int(t % nchunks);
      const int h = int((t / nchunks) % heads);
      const int b = int(t / (size_t(nchunks) * heads));
      const int i0 = c * kQChunk, i1 = std::min(seq, i0 + kQChunk), m = i1 - i0;
      const int tk = pos0 + i1;  // keys visible to the chunk's last query
      const float* qp = q + (size_t(b) * seq + i0) * qd + size_t(h) * hd;
      const float* kp = k + size_t(b) * kv_batch_stride + size_t(h / group) * hd;
      const float* vp = v + size_t(b) * kv_batch_stride + size_t(h / group) * hd;
      float* op = out + (size_t(b) * seq + i0) * qd + size_t(h) * hd;
      scores.resize(size_t(m) * tk);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, tk, hd, scale, qp, int(qd), kp,
                  int(kvd), 0.0f, scores.data(), tk);
      for (int i = 0; i < m; ++i) {
        float* s = scores.data() + size_t(i) * tk;
        const int n = pos0 + i0 + i + 1;  // keys 0..own position
        softmax_inplace(s, n);
        std::fill(s + n, s + tk, 0.0f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, tk, 1.0f, scores.data(), tk,
                  vp, int(kvd), 0.0f, op, int(qd));
    }
  });
}

double log_sum_exp(const float* x, int64_t n) {
  const float mx = max_value(x, n);
  return double(mx) + std::log(sum_exp_shifted(x, n, mx));
}

int64_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace llmc::cpu
