// quant/hessian.h — THE Hessian accumulator: H = Σ x xᵀ over calibration rows, used by GPTQ
// (quant/gptq.h), AWQ (quant/method_awq.cpp) and fp8's GPTQ rounding (quant/method_fp8.cpp).
//
//  * Rows are real tokens only (the caller never passes padding). Products are formed in fp32
//    over chunks of at most 1024 rows and added into an fp64 accumulator.
//  * Where: on the GPU when backend::device() == CUDA at construction (backend/backend.h
//    XtxAccumulator holds H there and only the inputs cross the bus; a device view — the GPU
//    block runner's inputs — never leaves the GPU), else on the CPU (BLAS tiles of 128 columns
//    over the core/threads.h pool; a device view is copied to the host first).
//  * hessian() = 2/n · Σ x xᵀ, sum() = Σ x xᵀ (full symmetric, row-major [cols, cols], fp64);
//    all zero when n == 0.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace llmc {

class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t cols = 0);
  // x: [rows, cols] row-major (host).
  void add(const float* x, int64_t rows);
  // x.cols must equal cols(); host or device rows.
  void add(const backend::MatView& x);
  int64_t cols() const { return n_; }
  int64_t count() const { return count_; }
  bool on_gpu() const { return gpu_ != nullptr; }
  std::vector<double> hessian() const;  // 2/n · Σ x xᵀ
  std::vector<double> sum() const;      // Σ x xᵀ

 private:
  std::vector<double> scaled(double f) const;
  int64_t n_ = 0, count_ = 0;
  std::vector<double> acc_;  // CPU: upper triangle tiles valid, [n, n]
  std::shared_ptr<backend::XtxAccumulator> gpu_;
};

}  // namespace llmc
