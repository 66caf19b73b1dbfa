// backend/cuda/quant_search.cu — the search primitives of backend.h (fp8_static's input-scale
// search and activation-aware target, AWQ's scale and clip grids): batched row-major GEMMs,
// deterministic fp64 segment sums, INT fake quantization and shrink residuals on the grid rules
// of grid_device.cuh, and the Cholesky solve of the activation-aware target (cuSOLVER).
//
// All of it runs on the context's stream 0 (after what block_kernels.cu enqueued there); the
// calls returning host data synchronize it. fp32 math without TF32, fp64 sums in a fixed
// order (per-block partials added on the host in block order), so results do not depend on
// the run.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_context.cuh"
#include "backend/cuda/reduce_device.cuh"
#include "backend/cuda/cusolver_api.h"
#include "backend/cuda/grid_device.cuh"
#include "core/error.h"

namespace llmc::backend::cuda {

namespace {

constexpr int kSegThreads = 256;
constexpr int64_t kSegChunk = 1 << 16;  // elements per block of a long segment

DevBuf& partial_buf() {
  static DevBuf* b = new DevBuf;
  return *b;
}

// Block (x, y): segment y, elements [x·kSegChunk, (x+1)·kSegChunk) of it.
__global__ void seg_sum_kernel(int op, const float* a, int64_t sa, const float* b, int64_t sb,
                               int64_t len, double* part) {
  const int64_t s = blockIdx.y;
  const int64_t i0 = int64_t(blockIdx.x) * kSegChunk;
  const int64_t i1 = i0 + kSegChunk < len ? i0 + kSegChunk : len;
  const float* as = a + s * sa;
  const float* bs = b ? b + s * sb : nullptr;
  double acc = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const double x = as[i];
    if (op == 0) {
      acc += x * double(bs[i]);
    } else {
      const double d = bs ? x - double(bs[i]) : x;
      acc += d * d;
    }
  }
  const double t = block_sum(acc);
  if (threadIdx.x == 0) part[s * gridDim.x + blockIdx.x] = t;
}

// Short segments (len <= 1024): one warp per segment.
__global__ void seg_sum_warp_kernel(int op, const float* a, int64_t sa, const float* b,
                                    int64_t sb, int64_t len, int64_t nseg, double* out) {
  const int64_t s = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (s >= nseg) return;
  const float* as = a + s * sa;
  const float* bs = b ? b + s * sb : nullptr;
  double acc = 0;
  for (int64_t i = lane; i < len; i += 32) {
    const double x = as[i];
    if (op == 0) {
      acc += x * double(bs[i]);
    } else {
      const double d = bs ? x - double(bs[i]) : x;
      acc += d * d;
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) out[s] = acc;
}

// One warp per (row, group): min/max of w·s, the RTN parameters, the fake-quantized values.
__global__ void fake_quant_kernel(const float* w, int64_t out, int64_t in, const float* sc,
                                  int64_t gs, GridDev g, int minus_w, float* y) {
  const int64_t ng = (in + gs - 1) / gs;
  const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (wid >= out * ng) return;
  const int64_t r = wid / ng, c0 = (wid % ng) * gs;
  const int64_t len = gs < in - c0 ? gs : in - c0;
  const float* wr = w + r * in + c0;
  const float* s = sc + c0;
  float lo, hi;
  warp_range(len, lane, [&](int64_t i) { return wr[i] * s[i]; }, &lo, &hi);
  float qs;
  int32_t z;
  params_for_shrink(g, lo, hi, 1.0, &qs, &z);
  float* yr = y + r * in + c0;
  for (int64_t i = lane; i < len; i += 32) {
    const float v = wr[i] * s[i];
    const float d = grid_value(g, grid_code(g, v, qs, z), qs, z) / s[i];
    yr[i] = minus_w ? d - wr[i] : d;
  }
}

// One warp per (candidate k, row, group): parameters at shrink 1 - max_shrink·k/steps of the
// group's min/max, residuals value(code(w)) - w (as quant/awq.cpp awq_clip_quantize).
__global__ void shrink_residual_kernel(const float* w, int64_t out, int64_t in, int64_t gs,
                                       GridDev g, int steps, double max_shrink, int k0, int kc,
                                       float* D) {
  const int64_t ng = (in + gs - 1) / gs;
  const int64_t wid = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (wid >= int64_t(kc) * out * ng) return;
  const int64_t kk = wid / (out * ng), rem = wid % (out * ng);
  const int64_t r = rem / ng, c0 = (rem % ng) * gs;
  const int64_t len = gs < in - c0 ? gs : in - c0;
  const float* v = w + r * in + c0;
  float lo, hi;
  warp_range(len, lane, [&](int64_t i) { return v[i]; }, &lo, &hi);
  const double shrink = 1.0 - max_shrink * double(k0 + kk) / double(steps);
  float s;
  int32_t z;
  params_for_shrink(g, lo, hi, shrink, &s, &z);
  float* d = D + (kk * out + r) * in + c0;
  for (int64_t i = lane; i < len; i += 32) d[i] = float(grid_code(g, v[i], s, z) - z) * s - v[i];
}

__global__ void add_diag_d_kernel(double* A, const double* d, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    A[i * n + i] += d[i];
}

__global__ void f32_to_f64_kernel(const float* x, int64_t n, double* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = x[i];
}

__global__ void f64_to_f32_kernel(const double* x, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = float(x[i]);
}

GridDev grid_dev(const GridParams& p) {
  return GridDev{p.fp8 ? 1 : 0, p.bits, p.symmetric ? 1 : 0, p.sym_full_range ? 1 : 0,
                 p.fp16_scales ? 1 : 0, 0, 0.5};
}

unsigned warps_grid(int64_t warps) { return grid_for(warps * 32, 256, int64_t(1) << 30); }

}  // namespace

void srch_gemm_batched(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* A,
                       int64_t lda, int64_t sA, const float* B, int64_t ldb, int64_t sB, float* C,
                       int64_t ldc, int64_t sC, int batch) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  if (m > kMax || n > kMax || k > kMax || lda > kMax || ldb > kMax || ldc > kMax)
    fail("device batched gemm: unsupported shape");
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cublas().set_stream(c.blas, c.s[0]));
  LLMC_CU(cublas().set_math_mode(c.blas, CUBLAS_DEFAULT_MATH));
  const float one = 1.0f, zero = 0.0f;
  // Row-major C = A · op(B) is column-major Cᵀ = op(B)ᵀ · Aᵀ.
  LLMC_CU(cublas().sgemm_strided_batched(c.blas, b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         CUBLAS_OP_N, int(n), int(m), int(k), &one, B, int(ldb),
                                         sB, A, int(lda), sA, &zero, C, int(ldc), sC, batch));
}

void srch_seg_sums(int op, const float* a, int64_t sa, const float* b, int64_t sb, int64_t len,
                   int64_t nseg, double* out) {
  if (nseg <= 0) return;
  if (len <= 0) {
    std::fill(out, out + nseg, 0.0);
    return;
  }
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  if (len <= 1024) {
    double* d = partial_buf().as<double>(size_t(nseg));
    seg_sum_warp_kernel<<<warps_grid(nseg), 256, 0, c.s[0]>>>(op, a, sa, b, sb, len, nseg, d);
    LLMC_CU_LAUNCH("seg_sum_warp_kernel");
    LLMC_CU(cudaMemcpyAsync(out, d, size_t(nseg) * sizeof(double), cudaMemcpyDeviceToHost, c.s[0]));
    LLMC_CU(cudaStreamSynchronize(c.s[0]));
    return;
  }
  const int64_t nb = (len + kSegChunk - 1) / kSegChunk;
  if (nb > (int64_t(1) << 31) - 1) fail("device segment sums: segments too long");
  constexpr int64_t kMaxY = 65535;  // grid y limit: segments per launch
  const int64_t per = std::min(nseg, kMaxY);
  double* d = partial_buf().as<double>(size_t(nb * per));
  std::vector<double> h(size_t(nb * per));
  for (int64_t s0 = 0; s0 < nseg; s0 += per) {
    const int64_t ns = std::min(per, nseg - s0);
    seg_sum_kernel<<<dim3(unsigned(nb), unsigned(ns)), kSegThreads, 0, c.s[0]>>>(
        op, a + s0 * sa, sa, b ? b + s0 * sb : nullptr, sb, len, d);
    LLMC_CU_LAUNCH("seg_sum_kernel");
    LLMC_CU(cudaMemcpyAsync(h.data(), d, size_t(nb * ns) * sizeof(double), cudaMemcpyDeviceToHost,
                            c.s[0]));
    LLMC_CU(cudaStreamSynchronize(c.s[0]));
    for (int64_t s = 0; s < ns; ++s) {
      double t = 0;
      for (int64_t k = 0; k < nb; ++k) t += h[size_t(s * nb + k)];
      out[s0 + s] = t;
    }
  }
}

void srch_fake_quant(const float* w, int64_t out, int64_t in, const float* s, int64_t group,
                     const GridParams& p, bool minus_w, float* y) {
  if (out <= 0 || in <= 0) return;
  const int64_t gs = group > 0 ? group : in;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const int64_t warps = out * ((in + gs - 1) / gs);
  fake_quant_kernel<<<warps_grid(warps), 256, 0, c.s[0]>>>(w, out, in, s, gs, grid_dev(p),
                                                           minus_w ? 1 : 0, y);
  LLMC_CU_LAUNCH("fake_quant_kernel");
}

void srch_shrink_residuals(const float* w, int64_t out, int64_t in, int64_t group,
                           const GridParams& p, int steps, double max_shrink, int k0, int kc,
                           float* D) {
  if (out <= 0 || in <= 0 || kc <= 0) return;
  const int64_t gs = group > 0 ? group : in;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const int64_t warps = int64_t(kc) * out * ((in + gs - 1) / gs);
  shrink_residual_kernel<<<warps_grid(warps), 256, 0, c.s[0]>>>(w, out, in, gs, grid_dev(p),
                                                                steps, max_shrink, k0, kc, D);
  LLMC_CU_LAUNCH("shrink_residual_kernel");
}

bool srch_wiener_solve(const double* H, const double* dg, const float* w, int64_t out, int64_t n,
                       float* x) {
  Context& c = ctx();
  std::lock_guard<std::mutex> lock(c.mu);
  cudaStream_t st = c.s[0];
  const CusolverApi& so = cusolver();
  cusolverDnHandle_t sh = cusolver_handle();
  check_cusolver(so.set_stream(sh, st), "cusolverDnSetStream");
  DevBuf dH, dA, dd, dW, dB, dwork, dinfo, dwf;
  double* Hd = dH.as<double>(size_t(n * n));
  double* A = dA.as<double>(size_t(n * n));
  double* d = dd.as<double>(size_t(n));
  double* Wd = dW.as<double>(size_t(out * n));
  double* B = dB.as<double>(size_t(out * n));
  float* wf = dwf.as<float>(size_t(out * n));
  int* info = dinfo.as<int>(1);
  LLMC_CU(cudaMemcpyAsync(Hd, H, size_t(n * n) * sizeof(double), cudaMemcpyHostToDevice, st));
  LLMC_CU(cudaMemcpyAsync(d, dg, size_t(n) * sizeof(double), cudaMemcpyHostToDevice, st));
  LLMC_CU(cudaMemcpyAsync(wf, w, size_t(out * n) * sizeof(float), cudaMemcpyHostToDevice, st));
  f32_to_f64_kernel<<<grid_for(out * n, 256), 256, 0, st>>>(wf, out * n, Wd);
  LLMC_CU_LAUNCH("f32_to_f64_kernel");
  LLMC_CU(cudaMemcpyAsync(A, Hd, size_t(n * n) * sizeof(double), cudaMemcpyDeviceToDevice, st));
  add_diag_d_kernel<<<grid_for(n, 256), 256, 0, st>>>(A, d, n);
  LLMC_CU_LAUNCH("add_diag_d_kernel");
  int lwork = 0;
  check_cusolver(so.dpotrf_buffer_size(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lwork),
                 "cusolverDnDpotrf_bufferSize");
  double* work = dwork.as<double>(size_t(std::max(lwork, 1)));
  check_cusolver(so.dpotrf(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), work, lwork, info),
                 "cusolverDnDpotrf");
  int h = 0;
  LLMC_CU(cudaMemcpyAsync(&h, info, sizeof(int), cudaMemcpyDeviceToHost, st));
  LLMC_CU(cudaStreamSynchronize(st));
  if (h != 0) return false;
  // B (column-major n × out) = H Wᵀ: H is symmetric, Wᵀ is W row-major read column-major.
  LLMC_CU(cublas().set_stream(c.blas, st));
  const double one = 1.0, zero = 0.0;
  LLMC_CU(cublas().dgemm(c.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(out), int(n), &one, Hd,
                         int(n), Wd, int(n), &zero, B, int(n)));
  check_cusolver(so.dpotrs(sh, CUBLAS_FILL_MODE_LOWER, int(n), int(out), A, int(n), B, int(n), info),
                 "cusolverDnDpotrs");
  LLMC_CU(cudaMemcpyAsync(&h, info, sizeof(int), cudaMemcpyDeviceToHost, st));
  f64_to_f32_kernel<<<grid_for(out * n, 256), 256, 0, st>>>(B, out * n, wf);
  LLMC_CU_LAUNCH("f64_to_f32_kernel");
  LLMC_CU(cudaMemcpyAsync(x, wf, size_t(out * n) * sizeof(float), cudaMemcpyDeviceToHost, st));
  LLMC_CU(cudaStreamSynchronize(st));
  return h == 0;
}

}  // namespace llmc::backend::cuda
