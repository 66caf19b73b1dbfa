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
//    CPU only by float32 summation order — except where TF32 applies (cuda_tf32(): the block
//    forwards' GEMMs and attention, and the dense GEMM of eval/generate; never statistics,
//    solvers, error reports or the loss GEMMs of searches, which pass allow_tf32 = false — AWQ's
//    attention loss compares partial block runs, which are forwards).
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

// TF32 tensor-core math for the GPU's forward GEMMs and attention (~3x faster, ~1e-3 relative
// error per product; heldout ppl/KL of quantized qwen3-small unchanged beyond the noise of
// rounding choices, bench/results/cuda_quality.json). On by default; env LLMC_CUDA_TF32=0 (or
// off) or the CLI's --cuda-fp32 turns it off.
void set_cuda_tf32(bool on);
bool cuda_tf32();

// ---- dense GEMM offload (model/linear.cpp's gemm_xwt calls this first) ----
// y[rows, n] = x[rows, k] · w[n, k]ᵀ on the GPU when device() == CUDA and the product is large
// enough to gain from it (rows >= 16 and 2·rows·n·k >= 2^24 flops; decode-sized GEMVs stay on
// the CPU). Returns false, touching nothing, when the caller should run its CPU path. TF32 when
// cuda_tf32() and `allow_tf32` (forwards); allow_tf32 = false for losses and error reports.
bool try_gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
                  bool allow_tf32 = true);
// The GPU GEMM unconditionally (tests, benchmarks). Requires device() == CUDA.
void cuda_gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
                   bool allow_tf32 = true);

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

// A row-major fp32 matrix [rows, cols] in host memory (where == CPU) or in GPU memory
// (where == CUDA: `data` is a device pointer, to be passed only to the functions of this header).
// The calibration inputs of the GPU block runner reach LinearHooks as device views.
struct MatView {
  const float* data = nullptr;
  int64_t rows = 0, cols = 0;
  Device where = Device::CPU;
  bool on_device() const { return where == Device::CUDA; }
};
// The rows of a view as a host array: `v.data` itself for a host view, else a copy in *buf.
const float* host_rows(const MatView& v, std::vector<float>* buf);

// Accumulator that keeps H where it is computed (on the GPU for CUDA: only x crosses the bus).
// It is the storage of quant/hessian.h HessianAccumulator, the one Hessian class methods use.
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
  // The same from a view; a device view feeds a GPU accumulator without leaving the GPU.
  void add(const MatView& x, double alpha = 1.0);
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

// ---- GPTQ column solver on the GPU (quant/gptq.h gptq_quantize dispatches here for large
// layers when device() == CUDA; its CPU solver is the reference) ----
// One linear [out, n], already in processing order (act-order permutation applied, dead
// columns zeroed, their diagonal set to 1):
//  1. U = upper Cholesky factor of (H + λI)⁻¹ in fp64 (cuSOLVER potrf, potri, potrf), with
//     λ = damp · mean_diag; while a factorization fails (or diag U is not finite and > 0) damp
//     is raised ×10, at most damp_retries times. All fail: returns false, outputs untouched,
//     damp_used = the last damp tried.
//  2. Columns left to right in lazy batches of `block` columns (a multiple of `group` when
//     group > 0): per column j each row's code c = code(w_j) on the grid, its error
//     e = (w_j - value(c)) / U[j,j] spread over the batch's later columns (w_k -= e U[j,k],
//     fp32), then W[:, i2:] -= E · U[i1:i2, i2:] (cuBLAS sgemm, fp32, no TF32).
//  3. Parameters: params_given — scales/zeros hold them on entry, the value of position j in
//     row r at index r · param_stride + (gidx ? gidx[j] : 0). Otherwise (group > 0) each run of
//     `group` columns gets them when the solver reaches its first column, from the current
//     weights, by quant/grid.h's INT rule (fp16 scales when fp16_scales, shrink search of
//     search_steps weighted by imp (processing order, may be null), ties keep the least
//     shrink), written at r · param_stride + j / group.
// Grid: fp8 — code f32_to_fp8e4m3(w / s), value fp8(c) · s; else INT with bits/symmetric:
// code clamp(rint(w / s) + z), value (c - z) · s. Results equal the CPU solver's up to fp32
// summation order (codes can differ where a value lies within rounding of a decision boundary).
struct GptqSolveJob {
  int64_t out = 0, n = 0;
  const float* w = nullptr;   // [out, n]
  const double* h = nullptr;  // [n, n]
  double damp = 0.01, mean_diag = 1.0;
  int damp_retries = 4;
  bool fp8 = false;
  int bits = 4;
  bool symmetric = true, sym_full_range = true, fp16_scales = true;
  int search_steps = 0;
  double min_shrink = 0.5;
  int64_t group = 0, block = 128;
  bool params_given = false;
  const int32_t* gidx = nullptr;  // [n] or null
  int64_t param_stride = 1;
  const float* imp = nullptr;     // [n] or null
  int32_t* codes = nullptr;       // [out, n] out
  float* scales = nullptr;        // in (params_given) / out
  int32_t* zeros = nullptr;       // in / out; null for symmetric and fp8 grids
  double damp_used = 0;           // out
};
// Requires device() == CUDA (else llmc::Error); CUDA failures throw llmc::Error.
bool cuda_gptq_solve(GptqSolveJob& job);

// The whole GPTQ layer on the GPU from natural-order host inputs (quant/gptq.cpp's CUDA path):
// upload W and H once; on the device, zero the dead columns, apply the processing order `perm`
// to W and H (dead diagonals set to 1), compute the parameters known before the solve (static
// natural groups, or per channel, by the INT rule weighted by imp_nat; or the fixed fp8
// scales), run cuda_gptq_solve's steps 1-3 on device arrays, decode the codes to natural order,
// and — when `report` — the terms of the relative output errors of the result and of plain RTN
// on the same grid: x_r H x_rᵀ (H in fp32, fp64 row dots) of every row of [W; Wq - W; RTN - W]
// (quant/gptq.cpp sums them). Only the natural-order code bytes (uint8(code), the
// QuantizedWeight q8/qu byte), the parameters and those row terms come back.
// False when every damping fails (outputs other than damp_used untouched).
struct GptqLayerJob {
  GptqSolveJob solve;             // out, n, grid, group, block, damp*, search_steps; w/h unused
  const float* w = nullptr;       // [out, n] natural order, original (not zeroed)
  const double* h = nullptr;      // [n, n] natural order, original
  const int32_t* perm = nullptr;  // [n] processing position -> column
  const uint8_t* dead = nullptr;  // [n] 1 where diag(H) == 0
  const float* imp_nat = nullptr; // [n] diag(H), dead as 1 (null: unweighted search)
  bool static_groups = false;     // group > 0: natural groups' parameters before the solve
  const float* fixed_scales = nullptr;  // fp8 grid: 1 (group 0) or out (group -1) scales
  bool report = false, report_rtn = false;
  // Optional (quant/gptq.h GptqOptions h_add, error_ref): the solver uses H + diag(h_add) (the
  // report H); the report measures against w_ref (fp8 grids; its RTN baseline rounds w_ref with
  // ref_scales).
  const double* h_add = nullptr;     // [n]
  const float* w_ref = nullptr;      // [out, n]
  const float* ref_scales = nullptr; // as fixed_scales
  uint8_t* code_bytes = nullptr;  // [out, n] out, natural order
  // solve.scales / solve.zeros: out (the layout of the result, see gptq_quantize).
  // out (when report): x_r H x_rᵀ of the rows of [W_ref; Wq - W_ref] (+ [RTN - W_ref] when
  // report_rtn), [(2 or 3) · out].
  std::vector<double> row_quads;
};
bool cuda_gptq_layer(GptqLayerJob& job);

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

// ---- device-resident arrays and the block primitives (the GPU block runner) ----
// Used by model/ (TransformerModel::run_block_device) and quant/ (statistics on device views).
// Everything below requires device() == CUDA (or cuda_available() for DeviceArray) and throws
// llmc::Error otherwise. Operations on device pointers are enqueued, in call order, on one
// stream; the calls that return host data (download, abs_max, col_abs_sum, gather_rows) wait
// for everything enqueued before them. All math is fp32 without TF32 (unless set_cuda_tf32),
// reductions of norms and softmax sums in fp64, so results differ from the CPU kernels
// (backend/cpu/kernels.h) only by summation order.

// An owned fp32 array in GPU memory (move-only, freed on destruction, contents uninitialized).
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(int64_t n);
  ~DeviceArray();
  DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  float* data() const { return p_; }
  int64_t size() const { return n_; }
  // Grows (never shrinks) to at least n elements; contents are lost when it grows.
  void reserve(int64_t n);
  void upload(const float* host, int64_t n, int64_t offset = 0);
  void download(float* host, int64_t n, int64_t offset = 0) const;
  MatView view(int64_t rows, int64_t cols, int64_t row0 = 0) const {
    return {p_ + row0 * cols, rows, cols, Device::CUDA};
  }

 private:
  float* p_ = nullptr;
  int64_t n_ = 0;
};

// Free / total GPU memory now, and the largest use (total - free) seen so far: sampled at each
// allocation llmc makes on the GPU and at every note_gpu_memory() call.
uint64_t cuda_free_bytes();
uint64_t cuda_peak_used_bytes();
void note_gpu_memory();

// 64-bit fingerprint of host bytes (the weight cache's key; multithreaded).
uint64_t content_fingerprint(const void* p, size_t bytes);

namespace dev {
void copy(float* dst, const float* src, int64_t n);               // device -> device
void upload_async(float* dst, const float* host, int64_t n);       // waits for the copy itself
// y[rows, n] = x[rows, k] · w[n, k]ᵀ (+ bias[n]), all device pointers.
// TF32 when cuda_tf32() and allow_tf32 (forwards); false for search losses.
void gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              const float* bias = nullptr, bool allow_tf32 = true);
// As cpu::rms_norm (fp64 sum of squares, HF rounding order); y may alias x.
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, double eps, float* y);
// As cpu::rope_apply with pos0 = 0; cos/sin: device tables [seq, hd/2].
void rope(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq, const float* cos,
          const float* sin);
// As cpu::causal_attention with pos0 = 0 and k/v of `batch` sequences of `seq` rows
// (kv_heads*hd per row): per query chunk cuBLAS QKᵀ over the visible keys only, an fp32
// softmax kernel (fp64 sum), then P·V. Scratch grows with seq² · kv_heads.
void causal_attention(const float* q, const float* k, const float* v, int batch, int seq,
                      int heads, int kv_heads, int hd, float* out);
void silu_mul(const float* gate, const float* up, float* out, int64_t n);  // as cpu::silu_mul
void add_inplace(float* y, const float* x, int64_t n);
// As llmc::quantize_activations, bit for bit, in place on device rows.
void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols);
// Statistics of a device matrix, returned to the host.
float abs_max(const float* x, int64_t n);  // NaN ignored as std::max(m, fabs(x)) does
// 64-bit fingerprint of the contents of a device array (order-free XOR of element hashes): the
// key of caches of device activations.
uint64_t fingerprint(const float* x, int64_t n);
// sums[c] += Σ_r |x[r, c]| (fp64).
void col_abs_sum(const float* x, int64_t rows, int64_t cols, double* sums);
// Appends rows first, first + stride, ... (< rows) of x [rows, cols] to *out.
void gather_rows(const float* x, int64_t rows, int64_t cols, int64_t first, int64_t stride,
                 std::vector<float>* out);
void sync();  // waits for everything enqueued
}  // namespace dev

// ---- search primitives (fp8_static's input-scale search and activation-aware target, AWQ's
// scale and clip grids; backend/cuda/quant_search.cu). Require device() == CUDA. ----
// A grid of quant/grid.h for the device kernels (INT unless fp8; bits 2..8).
struct GridParams {
  bool fp8 = false;
  int bits = 4;
  bool symmetric = true, sym_full_range = true, fp16_scales = true;
};
// Solves (H + diag(d)) Xᵀ = H Wᵀ for X [out, n] (fp64 Cholesky factorization and solve by
// cuSOLVER, H Wᵀ by cuBLAS dgemm; w, x fp32 host arrays, H [n, n] symmetric and d [n] fp64
// host arrays). False when H + diag(d) is not positive definite (x untouched).
bool cuda_wiener_solve(const double* H, const double* d, const float* w, int64_t out, int64_t n,
                       float* x);

namespace dev {
// Row-major C_b [m, n] = A_b [m, k] · B_b (B_b [k, n]; b_transposed: B_b [n, k] and A_b · B_bᵀ)
// for b < batch, with leading dimensions and batch strides in elements (device pointers). fp32
// without TF32 whatever set_cuda_tf32 says: searches compare candidates' losses.
void gemm_batched(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                  int64_t sA, const float* B, int64_t ldb, int64_t sB, float* C, int64_t ldc,
                  int64_t sC, int batch);
// out[s] (host) = Σ_{i < len} f(a[s·sa + i], b[s·sb + i]) for s < nseg, in fp64 in a fixed
// order: f = a·b (Dot) or (a - b)² (SqDiff; b == nullptr: a²).
enum class SegOp { Dot, SqDiff };
void seg_sums(SegOp op, const float* a, int64_t sa, const float* b, int64_t sb, int64_t len,
              int64_t nseg, double* out);
// y[r, c] = Q(w[r, c] · s[c]) / s[c] (minus w[r, c] when minus_w), Q round-to-nearest on the INT
// grid g with the parameters of each group of `group` columns (-1: the whole row) from its
// min/max: quant/awq.h awq_fake_quant_scaled, bit for bit (y may not alias w).
void fake_quant_scaled(const float* w, int64_t out, int64_t in, const float* s, int64_t group,
                       const GridParams& g, bool minus_w, float* y);
// AWQ's clipping candidates: for k in [k0, k0 + kc), D[k - k0] [out, in] = value(code(w)) - w
// with each group's parameters at shrink 1 - max_shrink · k / steps of its min/max range (as
// quant/awq.cpp awq_clip_quantize computes them).
void shrink_residuals(const float* w, int64_t out, int64_t in, int64_t group, const GridParams& g,
                      int steps, double max_shrink, int k0, int kc, float* D);
}  // namespace dev

}  // namespace llmc::backend
