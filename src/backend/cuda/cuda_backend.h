// backend/cuda/cuda_backend.h — internal interface between backend.cpp (dispatch, CPU paths)
// and the CUDA implementation (*.cu here, compiled only when LLMC_HAVE_CUDA). Not for callers
// outside src/backend: use backend/backend.h.
//
// Every function in llmc::backend::cuda may throw llmc::Error ("CUDA error: ... in <call>") and
// is serialized by one process-wide lock; all of them return with their host outputs written.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/backend.h"

namespace llmc::backend {

// ---- host helpers (backend.cpp; always compiled) ----
// 64-bit fingerprint of a byte range (xxhash64-style rounds over 1 MiB chunks, multithreaded).
// Any change of content changes it except with probability ~2^-64.
uint64_t fingerprint(const void* p, size_t bytes, uint64_t seed = 0);
// memcpy split across the thread pool (host <-> pinned staging copies).
void parallel_memcpy(void* dst, const void* src, size_t bytes);
// Bytes of one staging chunk (LLMC_CUDA_CHUNK_MB, default 8 MiB).
size_t staging_chunk_bytes();

namespace cuda {

// Number of usable devices; when 0, *why says why (driver missing, no device, ...).
int device_count(std::string* why);
std::string device_info();

void gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              bool tf32);
CacheStats cache_stats();
void set_cache_budget(uint64_t bytes);
void release();

// Hessian accumulation. The state holds H (fp64) and an fp32 scratch on the device.
struct XtxState;
XtxState* xtx_create(int64_t cols);
void xtx_destroy(XtxState* s) noexcept;
void xtx_add(XtxState* s, const float* x, int64_t rows, double alpha);
void xtx_reset(XtxState* s);
void xtx_read(const XtxState* s, double* H);
void syrk_accumulate(const float* x, int64_t rows, int64_t cols, float* H, float alpha);

void xtx_add_device(XtxState* s, const float* dx, int64_t rows, double alpha);

// Device arrays and block primitives (backend.h "device-resident arrays"; block_kernels.cu).
float* dev_alloc(int64_t n);
void dev_free(float* p) noexcept;
void dev_upload(float* d, const float* h, int64_t n);
void dev_download(float* h, const float* d, int64_t n);
void dev_copy(float* dst, const float* src, int64_t n);
uint64_t free_bytes();
uint64_t peak_used_bytes();
void note_memory();
void blk_gemm(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              const float* bias, bool tf32);
void blk_rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, double eps, float* y);
void blk_rope(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq, const float* cos,
              const float* sin);
void blk_attention(const float* q, const float* k, const float* v, int batch, int seq, int heads,
                   int kv_heads, int hd, float* out, bool tf32);
void blk_silu_mul(const float* g, const float* u, float* out, int64_t n);
void blk_add(float* y, const float* x, int64_t n);
void blk_act_quant(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols);
float blk_abs_max(const float* x, int64_t n);
uint64_t blk_fingerprint(const float* x, int64_t n);
void blk_col_abs_sum(const float* x, int64_t rows, int64_t cols, double* sums);
void blk_gather_rows(const float* x, int64_t rows, int64_t cols, int64_t first, int64_t stride,
                     float* out, int64_t count);
void blk_sync();
// GPTQ column solver (backend.h cuda_gptq_solve; arguments checked there).
bool gptq_solve(GptqSolveJob& job);
bool gptq_layer(GptqLayerJob& job);
// Search primitives (backend.h; quant_search.cu).
void srch_gemm_batched(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* A,
                       int64_t lda, int64_t sA, const float* B, int64_t ldb, int64_t sB, float* C,
                       int64_t ldc, int64_t sC, int batch);
void srch_seg_sums(int op, const float* a, int64_t sa, const float* b, int64_t sb, int64_t len,
                   int64_t nseg, double* out);
void srch_fake_quant(const float* w, int64_t out, int64_t in, const float* s, int64_t group,
                     const GridParams& g, bool minus_w, float* y);
void srch_shrink_residuals(const float* w, int64_t out, int64_t in, int64_t group,
                           const GridParams& g, int steps, double max_shrink, int k0, int kc,
                           float* D);
bool srch_wiener_solve(const double* H, const double* d, const float* w, int64_t out, int64_t n,
                       float* x);

void dequantize(const QuantizedWeight& qw, float* out);
void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols);
void qlinear_forward(const QuantizedWeight& qw, const float* x, int64_t rows, float* y, bool tf32);

// Device-only timings for benchmarks (CUDA events around `reps` calls after a warm-up, inputs
// already resident, random data): seconds per call.
double time_sgemm_device(int64_t rows, int64_t k, int64_t n, bool tf32, int reps);
double time_syrk_device(int64_t rows, int64_t cols, int reps);
double time_dequant_device(const QuantizedWeight& qw, int reps);
// Host -> device copy from pinned memory: seconds per copy of `bytes`.
double time_h2d_pinned(size_t bytes, int reps);

}  // namespace cuda
}  // namespace llmc::backend
