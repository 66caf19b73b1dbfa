// quant/hessian.cpp — the Hessian accumulator (quant/hessian.h).
#include "quant/hessian.h"

#include <cblas.h>

#include <algorithm>
#include <utility>

#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threads.h"

namespace llmc {

namespace {
constexpr int64_t kTile = 128;       // Hessian tile edge
constexpr int64_t kChunkRows = 1024; // rows summed in fp32 before adding into fp64
}  // namespace

HessianAccumulator::HessianAccumulator(int64_t cols) : n_(cols) {
  if (cols > 0 && backend::device() == backend::Device::CUDA) {
    gpu_ = std::make_shared<backend::XtxAccumulator>(cols);
  } else {
    acc_.assign(size_t(cols * cols), 0.0);
  }
}

void HessianAccumulator::add(const float* x, int64_t rows) {
  if (rows <= 0 || n_ == 0) return;
  if (gpu_) {
    gpu_->add(x, rows);
    count_ += rows;
    return;
  }
  cpu::blas_init();  // OpenBLAS single-threaded: the pool parallelizes (model/linear.h)
  const int64_t nb = (n_ + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t bj = bi; bj < nb; ++bj) pairs.push_back({bi, bj});
  const int64_t n = n_;
  parallel_for(0, pairs.size(), 1, [&](size_t lo, size_t hi) {
    std::vector<float> tmp(size_t(kTile * kTile));
    for (size_t p = lo; p < hi; ++p) {
      const int64_t i0 = pairs[p].first * kTile, j0 = pairs[p].second * kTile;
      const int64_t ti = std::min(kTile, n - i0), tj = std::min(kTile, n - j0);
      for (int64_t r0 = 0; r0 < rows; r0 += kChunkRows) {
        const int64_t rc = std::min(kChunkRows, rows - r0);
        const float* xr = x + r0 * n;
        if (i0 == j0) {
          cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(ti), int(rc), 1.0f, xr + i0,
                      int(n), 0.0f, tmp.data(), int(tj));
          for (int64_t a = 0; a < ti; ++a)
            for (int64_t b = a; b < tj; ++b)
              acc_[size_t((i0 + a) * n + j0 + b)] += double(tmp[size_t(a * tj + b)]);
        } else {
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(ti), int(tj), int(rc), 1.0f,
                      xr + i0, int(n), xr + j0, int(n), 0.0f, tmp.data(), int(tj));
          for (int64_t a = 0; a < ti; ++a)
            for (int64_t b = 0; b < tj; ++b)
              acc_[size_t((i0 + a) * n + j0 + b)] += double(tmp[size_t(a * tj + b)]);
        }
      }
    }
  });
  count_ += rows;
}

void HessianAccumulator::add(const backend::MatView& x) {
  if (x.rows <= 0 || n_ == 0) return;
  if (x.cols != n_) fail("HessianAccumulator: input has ", x.cols, " columns, expected ", n_);
  if (gpu_) {
    gpu_->add(x);
    count_ += x.rows;
    return;
  }
  std::vector<float> buf;
  add(backend::host_rows(x, &buf), x.rows);
}

std::vector<double> HessianAccumulator::hessian() const {
  return count_ == 0 ? std::vector<double>(size_t(n_ * n_), 0.0) : scaled(2.0 / double(count_));
}

std::vector<double> HessianAccumulator::sum() const { return scaled(1.0); }

std::vector<double> HessianAccumulator::scaled(double f) const {
  std::vector<double> h;
  assign_zeroed(h, size_t(n_ * n_));  // huge pages: an 8B down_proj H is 1.2 GB
  if (count_ == 0) return h;
  if (gpu_) {
    gpu_->read(h.data(), f);
    return h;
  }
  for (int64_t i = 0; i < n_; ++i)
    for (int64_t j = i; j < n_; ++j) {
      const double v = acc_[size_t(i * n_ + j)] * f;
      h[size_t(i * n_ + j)] = v;
      h[size_t(j * n_ + i)] = v;
    }
  return h;
}

}  // namespace llmc
