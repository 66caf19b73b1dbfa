// backend/cpu/kernels.h — the CPU building blocks of the transformer forward pass, fp32.
//
// Every kernel matches the HuggingFace (PyTorch, fp32) definition of the operation; the only
// differences allowed are summation order (fp32 rounding). Row-parallel kernels use
// core/threads.h parallel_for. BLAS calls here run OpenBLAS single-threaded (blas_init()).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmc {

// Rotary position embedding parameters of a model (model/config.h parses them from config.json).
struct RopeConfig {
  double theta = 10000.0;
  std::string type = "default";  // "default" | "llama3" | "linear"
  double factor = 1.0;           // llama3 / linear
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int original_max_position = 8192;                      // llama3
};

}  // namespace llmc

namespace llmc::cpu {

// Sets OpenBLAS to one thread, once per process (the pool parallelizes instead).
void blas_init();
// For its lifetime, OpenBLAS/LAPACK calls made from this thread use num_threads() threads (a
// dense factorization with the pool idle); back to one thread afterwards. Not for use while
// other threads call BLAS.
class BlasThreadsScope {
 public:
  explicit BlasThreadsScope(bool enable = true);
  ~BlasThreadsScope();
  BlasThreadsScope(const BlasThreadsScope&) = delete;
  BlasThreadsScope& operator=(const BlasThreadsScope&) = delete;

 private:
  bool on_;
};

// y[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w, per row of `dim` (HF LlamaRMSNorm in fp32).
// y may alias x.
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, double eps, float* y);

// HF rotary inverse frequencies (fp32, as transformers computes them), with the llama3 /
// linear scaling of `rope`. Length head_dim / 2.
std::vector<float> rope_inv_freq(const RopeConfig& rope, int head_dim);
// cos/sin tables for positions [0, npos): [npos, half] each (HF: cos(float(pos * inv_freq))).
void rope_tables(const std::vector<float>& inv_freq, int npos, std::vector<float>* cos,
                 std::vector<float>* sin);
// Rotates, in place, `heads` heads of `hd` values in each row of x ([rows, stride]); row r is
// at position pos0 + r % seq. rotate_half convention: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s).
void rope_apply(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq, int pos0,
                const float* cos, const float* sin);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)). out may alias gate.
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
// y[i] += x[i].
void add_inplace(float* y, const float* x, int64_t n);

// Causal GQA attention. q, out: [batch*seq, heads*hd], the new positions pos0..pos0+seq-1 of
// each sequence. Keys/values of sequence b start at k + b*kv_batch_stride (v likewise), one
// row of kv_heads*hd per position, positions 0..pos0+seq-1 valid. Query head h reads kv head
// h / (heads / kv_heads). softmax(q·kᵀ / sqrt(hd)) in fp32 over keys <= own position.
void causal_attention(const float* q, const float* k, const float* v, int batch, int seq,
                      int pos0, int heads, int kv_heads, int hd, int64_t kv_batch_stride,
                      float* out);

// log(sum(exp(x))) of n values, accumulated in double.
double log_sum_exp(const float* x, int64_t n);
// Index of the largest value (first on ties).
int64_t argmax(const float* x, int64_t n);

}  // namespace llmc::cpu
