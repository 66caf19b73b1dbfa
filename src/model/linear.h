// model/linear.h — the engine's only view of a linear layer's weights.
//
// The engine knows nothing of quantization: it calls Linear::forward. Dense weights are
// DenseLinear (fp32, [out, in] row-major, sgemm); quantized storage (packed int4, fp8 with
// simulated activation quantization, ...) is provided by loader/ as other Linear subclasses.
// Contract: forward computes y[rows, out] = x[rows, in] · Wᵀ (+ bias), fp32, may use threads.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llmc {

// A linear module of a decoder block: its index in the block's BlockLayout::modules
// (model/arch.h), which gives its name, shape and input group. The named values are the
// modules of a dense Llama-style block (Q..O are the first four modules of every block).
enum class LinearSlot : int { Q = 0, K, V, O, Gate, Up, Down };

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  virtual void forward(const float* x, int64_t rows, float* y) const = 0;
  virtual uint64_t bytes_held() const = 0;  // memory this layer keeps resident

  // What the GPU block runner (Model::run_block_device) computes with: an fp32 weight [out, in]
  // (host, row-major), an optional bias [out] and the fake-quantization of the layer's inputs
  // (`act`: a backend ActQuant value, 0 = none). weight == nullptr: no such form; a block
  // holding this layer then runs on the CPU. The arrays stay valid while the layer lives.
  struct DenseForm {
    const float* weight = nullptr;
    const float* bias = nullptr;
    uint8_t act = 0;
    float input_scale = 0.0f;
  };
  virtual DenseForm dense_form() const { return {}; }
};

class DenseLinear : public Linear {
 public:
  DenseLinear(std::vector<float> weight, int64_t out, int64_t in, std::vector<float> bias = {});
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float* x, int64_t rows, float* y) const override;
  uint64_t bytes_held() const override { return (w_.size() + b_.size()) * sizeof(float); }
  DenseForm dense_form() const override { return {w_.data(), b_.empty() ? nullptr : b_.data()}; }
  const std::vector<float>& weight() const { return w_; }
  std::vector<float>& weight() { return w_; }
  const std::vector<float>& bias() const { return b_; }

 private:
  std::vector<float> w_, b_;
  int64_t out_, in_;
};

// y[rows, n] = x[rows, k] · w[n, k]ᵀ via OpenBLAS sgemm (row-major).
//
// Threading: llmc runs OpenBLAS single-threaded (set on first use of gemm_xwt) and
// splits large products into tiles over the core/threads.h pool itself, so BLAS threads never
// compete with pool threads; called from inside parallel_for it runs serially on that thread.
// Prefer gemm_xwt to calling cblas directly when the product is large.
// allow_tf32 = false keeps an offloaded GEMM in fp32 whatever backend::cuda_tf32() says (the
// losses searches compare); forwards leave it true.
void gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              bool allow_tf32 = true);

// Process-wide counters of gemm_xwt calls (for benchmarks): calls, floating-point operations
// (2·rows·k·n) and wall seconds spent inside gemm_xwt (summed over concurrent callers).
struct GemmStats {
  uint64_t calls = 0;
  double flops = 0, seconds = 0;
};
GemmStats gemm_stats();
void reset_gemm_stats();

}  // namespace llmc
