// backend/backend.h — where llmc computes: device selection and the few operations that have a
// GPU (CUDA) path next to their CPU one.
//
// Contracts:
//  * The process-wide device is CPU unless set_device() (CLI `--device cpu|cuda|auto`) or the
//    environment variable LLMC_DEVICE (read once, on the first call to device()) says otherwise.
//    Asking for CUDA when cuda_available() is false throws llmc::Error saying why (not compiled
//    in, no driver, no device).
//  * Every operation below computes the same function on either device. Integer/fp8 decoding and
//    activation fake-quantization are bit-exact across devices (a NaN stays NaN, its payload may
//    differ); GEMM and Xᵀ·X differ from the
//    CPU only by float32 summation order (TF32 is off unless set_cuda_tf32(true)).
//  * GPU entry points are safe to call from any thread (calls are serialized). Host buffers are
//    ordinary memory; every call returns with its outputs written (no asynchrony leaks out).
//  * Weights used by try_gemm_xwt / try_qlinear_forward stay resident on the GPU in a bounded
//    LRU cache addressed by content: a 64-bit fingerprint of the host bytes (recomputed on every
//    call, multithreaded) plus the sizes. A weight modified in place therefore maps to a new
//    entry (never served stale), and a temporary rebuilt with the same contents (a quantized
//    weight unpacked per call) hits. Budget: LLMC_CUDA_CACHE_MB (default: min(4 GiB, half the
//    free GPU memory)); a weight larger than the budget is uploaded for the call only.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/qweight.h"

namespace llmc::backend {

enum class Device { CPU, CUDA };

const char* device_name(Device d);  // "cpu" / "cuda"
// "cpu", "cuda" or "auto" (cuda when available, else cpu); anything else -> llmc::Error.
Device parse_device(std::string_view s);

bool cuda_compiled();    // built with the CUDA backend (LLMC_HAVE_CUDA)
bool cuda_available();   // compiled in AND at least one CUDA device usable at run time
// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB" or why CUDA is unavailable.
std::string cuda_device_info();

void set_device(Device d);  // CUDA without cuda_available() -> llmc::Error
Device device();
// Reads LLMC_DEVICE (cpu|cuda|auto) if set; an invalid value or unavailable CUDA -> llmc::Error.
// Called lazily by device(); the CLI calls it explicitly so the error surfaces early.
void init_device_from_env();

// TF32 tensor-core math for GPU GEMMs (faster, ~1e-3 relative error). Off by default; env
// LLMC_CUDA_TF32=1 turns it on.
void set_cuda_tf32(bool on);
bool cuda_tf32();

// ---- dense GEMM offload (model/linear.cpp's gemm_xwt calls this first) ----
// y[rows, n] = x[rows, k] · w[n, k]ᵀ on the GPU when device() == CUDA and the product is large
// enough to gain from it (rows >= 16 and 2·rows·n·k >= 2^24 flops; decode-sized GEMVs stay on
// the CPU). Returns false, touching nothing, when the caller should run its CPU path.
bool try_gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y);
// The GPU GEMM unconditionally (tests, benchmarks). Requires device() == CUDA.
void cuda_gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y);

struct CacheStats {
  uint64_t hits = 0, misses = 0, evictions = 0;
  uint64_t bytes = 0, entries = 0, budget = 0;
};
CacheStats weight_cache_stats();
void set_weight_cache_budget(uint64_t bytes);  // evicts down to it; 0 = default
void release_device_memory();                  // drops the weight cache and scratch buffers

// ---- Hessian accumulation for GPTQ: H = Σ xᵀx over calibration rows ----
// One-shot: H[cols, cols] += alpha · xᵀx, x [rows, cols] row-major, full symmetric H written,
// fp32 throughout (BLAS ssyrk on CPU, cuBLAS ssyrk on GPU).
void accumulate_xtx(const float* x, int64_t rows, int64_t cols, float* H, float alpha = 1.0f);

// Accumulator that keeps H where it is computed (on the GPU for CUDA: only x crosses the bus).
// Rows of one add() are summed in fp32 in chunks of at most kXtxChunkRows rows; chunks and calls
// are summed in fp64. The device is fixed at construction (device()).
inline constexpr int64_t kXtxChunkRows = 1024;  // as quant/gptq.h HessianAccumulator
class XtxAccumulator {
 public:
  explicit XtxAccumulator(int64_t cols);
  ~XtxAccumulator();
  XtxAccumulator(const XtxAccumulator&) = delete;
  XtxAccumulator& operator=(const XtxAccumulator&) = delete;

  void add(const float* x, int64_t rows, double alpha = 1.0);  // H += alpha · xᵀx
  void reset();                                                // H = 0
  int64_t cols() const { return cols_; }
  int64_t rows_seen() const { return rows_seen_; }
  Device where() const { return where_; }
  // Full symmetric H times `scale`, [cols, cols] row-major.
  void read(double* H, double scale = 1.0) const;
  void read(float* H, double scale = 1.0) const;

  struct Impl;

 private:
  int64_t cols_, rows_seen_ = 0;
  Device where_;
  std::unique_ptr<Impl> impl_;
};

// ---- quantized weights ----
// Same values as qw.dequantize() ([out, in] fp32), bit for bit; decoded on the GPU when
// device() == CUDA.
std::vector<float> dequantize(const QuantizedWeight& qw);
// Same as llmc::quantize_activations, bit for bit; on the GPU when device() == CUDA.
void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols);

// y[rows, out] = act_quant(x) · dequantize(qw)ᵀ (+ bias) entirely on the GPU (decoded weight
// cached there, keyed like try_gemm_xwt's cache by qw's codes), when device() == CUDA and the
// product is large enough; returns false when the caller should run its CPU path. `x` is not
// modified.
bool try_qlinear_forward(const QuantizedWeight& qw, const float* x, int64_t rows, float* y);

}  // namespace llmc::backend
