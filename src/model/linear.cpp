#include "model/linear.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/threads.h"

namespace llmc {

DenseLinear::DenseLinear(std::vector<float> weight, int64_t out, int64_t in,
                         std::vector<float> bias)
    : w_(std::move(weight)), b_(std::move(bias)), out_(out), in_(in) {
  if (out <= 0 || in <= 0 || int64_t(w_.size()) != out * in)
    fail("DenseLinear: weight has ", w_.size(), " values, expected ", out, " x ", in);
  if (!b_.empty() && int64_t(b_.size()) != out)
    fail("DenseLinear: bias has ", b_.size(), " values, expected ", out);
}

void DenseLinear::forward(const float* x, int64_t rows, float* y) const {
  gemm_xwt(x, rows, in_, w_.data(), out_, y);
  if (b_.empty()) return;
  parallel_for(0, size_t(rows), 64, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      float* yr = y + r * out_;
      for (int64_t j = 0; j < out_; ++j) yr[j] += b_[j];
    }
  });
}

namespace {
std::atomic<uint64_t> g_calls{0};
std::mutex g_stats_mu;
double g_flops = 0, g_seconds = 0;
}  // namespace

void gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              bool allow_tf32) {
  if (rows <= 0 || n <= 0) return;
  cpu::blas_init();
  const auto t0 = std::chrono::steady_clock::now();
  const double flops = 2.0 * double(rows) * double(k) * double(n);
  const int nt = num_threads();
  if (backend::try_gemm_xwt(x, rows, k, w, n, y, allow_tf32)) {
    // Ran on the GPU (backend/backend.h: device() == CUDA and the product is large enough).
  } else if (nt == 1 || flops < 4e6) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(n), int(k), 1.0f, x,
                int(k), w, int(k), 0.0f, y, int(n));
  } else {
    // Tiles of rows x output columns, column-tile-major so consecutive tasks share weights.
    int64_t mr = std::min<int64_t>(rows, 128);
    int64_t nc = n <= 512 ? n : 256;
    auto tiles = [&] { return ((rows + mr - 1) / mr) * ((n + nc - 1) / nc); };
    while (tiles() < 2 * nt && nc > 32) nc = std::max<int64_t>(32, (nc / 2 + 15) / 16 * 16);
    while (tiles() < 2 * nt && mr > 16) mr = std::max<int64_t>(16, mr / 2);
    const int64_t mt = (rows + mr - 1) / mr;
    parallel_for(0, size_t(tiles()), 1, [&](size_t t0_, size_t t1_) {
      for (size_t t = t0_; t < t1_; ++t) {
        const int64_t r0 = int64_t(t % mt) * mr, c0 = int64_t(t / mt) * nc;
        const int64_t m = std::min(mr, rows - r0), nn = std::min(nc, n - c0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(nn), int(k), 1.0f,
                    x + r0 * k, int(k), w + c0 * k, int(k), 0.0f, y + r0 * n + c0, int(n));
      }
    });
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  g_calls.fetch_add(1);
  std::lock_guard<std::mutex> g(g_stats_mu);
  g_flops += flops;
  g_seconds += dt;
}

GemmStats gemm_stats() {
  std::lock_guard<std::mutex> g(g_stats_mu);
  return GemmStats{g_calls.load(), g_flops, g_seconds};
}

void reset_gemm_stats() {
  std::lock_guard<std::mutex> g(g_stats_mu);
  g_calls = 0;
  g_flops = 0;
  g_seconds = 0;
}

}  // namespace llmc
