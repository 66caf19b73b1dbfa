// backend/cuda/gptq_solver.cu — the GPTQ column solver on the GPU (backend/backend.h
// cuda_gptq_solve): fp64 inverse Cholesky by cuSOLVER with damping retries, the lazy-batch
// column loop as one kernel per batch, the trailing update as a cuBLAS sgemm. The grid rules
// below are quant/grid.cpp's (and core/dtype.cpp's fp16/fp8 conversions), written for the
// device; tests/test_cuda.cpp compares this solver with the CPU one.
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_context.cuh"
#include "backend/cuda/cusolver_api.h"
#include "backend/cuda/grid_device.cuh"
#include "core/error.h"

namespace llmc::backend::cuda {

namespace {

constexpr int kRows = 8;           // rows per thread block of the column kernel
constexpr int kThreads = 128;      // threads per thread block (4 warps)
constexpr int64_t kMaxBatch = 1024;
constexpr int64_t kGivenBatch = 128;  // batch when the parameters are given and block is larger

__device__ double group_error_warp(const GridDev& g, const float* v, int64_t len,
                                   const float* imp, float s, int32_t z, int lane) {
  double e = 0;
  for (int64_t i = lane; i < len; i += 32) {
    const int32_t q = grid_code(g, v[i], s, z);
    const double d = double(grid_value(g, q, s, z)) - double(v[i]);
    e += (imp ? double(imp[i]) : 1.0) * d * d;
  }
  return warp_sum(e);
}

// quant/grid.cpp group_params for one group, computed by one warp.
__device__ void group_params_warp(const GridDev& g, const float* v, int64_t len,
                                  const float* imp, int lane, float* scale, int32_t* zero) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = lane; i < len; i += 32) {
    lo = fminf(lo, v[i]);
    hi = fmaxf(hi, v[i]);
  }
  for (int m = 16; m > 0; m >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, m));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, m));
  }
  params_for_shrink(g, lo, hi, 1.0, scale, zero);
  if (g.search_steps <= 0 || !(hi > lo)) return;
  double best = group_error_warp(g, v, len, imp, *scale, *zero, lane);
  const double step = (1.0 - g.min_shrink) / g.search_steps;
  for (int k = 1; k <= g.search_steps; ++k) {
    float s;
    int32_t z;
    params_for_shrink(g, lo, hi, 1.0 - step * k, &s, &z);
    const double e = group_error_warp(g, v, len, imp, s, z, lane);
    if (e < best) {
      best = e;
      *scale = s;
      *zero = z;
    }
  }
}

struct ColArgs {
  GridDev g;
  int64_t out, n, i1, bw, group, stride, ldE;
  int params_given;
  const int32_t* gidx;
  const float* imp;
  const float* W;
  const float* U;
  float* E;
  int32_t* codes;
  float* scales;
  int32_t* zeros;
};

// One batch [i1, i1 + bw) for kRows rows: the columns in order, each row's code and error,
// the rank-1 updates of the batch's later columns (in shared memory).
__global__ void __launch_bounds__(kThreads) columns_kernel(ColArgs a) {
  extern __shared__ float tile[];  // [kRows][bw]
  __shared__ float err_s[kRows], scale_s[kRows];
  __shared__ int32_t zero_s[kRows];
  const int64_t r0 = int64_t(blockIdx.x) * kRows;
  const int rows = a.out - r0 < kRows ? int(a.out - r0) : kRows;
  const int64_t bw = a.bw;
  for (int64_t idx = threadIdx.x; idx < rows * bw; idx += blockDim.x) {
    const int64_t rr = idx / bw, k = idx % bw;
    tile[idx] = a.W[(r0 + rr) * a.n + a.i1 + k];
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t jj = 0; jj < bw; ++jj) {
    const int64_t j = a.i1 + jj;
    if (!a.params_given && a.group > 0 && j % a.group == 0) {
      const int64_t len = a.group < a.n - j ? a.group : a.n - j;
      for (int rr = warp; rr < rows; rr += kThreads / 32) {
        float s;
        int32_t z;
        group_params_warp(a.g, tile + rr * bw + jj, len, a.imp ? a.imp + j : nullptr, lane, &s,
                          &z);
        if (lane == 0) {
          const int64_t p = (r0 + rr) * a.stride + j / a.group;
          a.scales[p] = s;
          if (a.zeros) a.zeros[p] = z;
          scale_s[rr] = s;
          zero_s[rr] = z;
        }
      }
      __syncthreads();
    }
    if (int(threadIdx.x) < rows) {
      const int rr = threadIdx.x;
      const int64_t r = r0 + rr;
      float s = scale_s[rr];
      int32_t z = zero_s[rr];
      if (a.params_given) {
        const int64_t p = r * a.stride + (a.gidx ? a.gidx[j] : 0);
        s = a.scales[p];
        z = a.zeros ? a.zeros[p] : 0;
      }
      const float v = tile[rr * bw + jj];
      const int32_t c = grid_code(a.g, v, s, z);
      a.codes[r * a.n + j] = c;
      const float e = grid_residual(a.g, v, c, s, z) / a.U[j * a.n + j];
      a.E[r * a.ldE + jj] = e;
      err_s[rr] = e;
    }
    __syncthreads();
    for (int64_t k = jj + 1 + threadIdx.x; k < bw; k += blockDim.x) {
      const float u = a.U[j * a.n + a.i1 + k];
      for (int rr = 0; rr < rows; ++rr) tile[rr * bw + k] -= err_s[rr] * u;
    }
    __syncthreads();
  }
}

__global__ void add_diag_kernel(double* A, int64_t n, double lambda) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    A[i * n + i] += lambda;
}

// Column-major lower triangle (i >= j at A[i + j n]) mirrored into the upper one.
__global__ void mirror_lower_kernel(double* A, int64_t n) {
  const int64_t total = n * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e / n, i = e % n;  // A[i + j n]
    if (i < j) A[i + j * n] = A[j + i * n];
  }
}

// Row-major view of the column-major factor L (A⁻¹ = L Lᵀ) is U = Lᵀ: keep c >= r, in fp32;
// *bad = 1 when a diagonal entry is not finite and > 0.
__global__ void make_u_kernel(const double* A, int64_t n, float* U, int* bad) {
  const int64_t total = n * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / n, c = e % n;
    U[e] = c >= r ? float(A[e]) : 0.0f;
    if (r == c && !(A[e] > 0 && isfinite(A[e]))) *bad = 1;
  }
}

}  // namespace

bool gptq_solve(GptqSolveJob& job) {
  Context& c = ctx();
  std::lock_guard<std::mutex> lock(c.mu);
  const int64_t out = job.out, n = job.n;
  cudaStream_t st = c.s[0];
  const CusolverApi& so = cusolver();
  cusolverDnHandle_t sh = cusolver_handle();
  check_cusolver(so.set_stream(sh, st), "cusolverDnSetStream");

  DevBuf dH, dA, dU, dW, dE, dcodes, dscales, dzeros, dgidx, dimp, dwork, dinfo;
  double* H = dH.as<double>(size_t(n * n));
  double* A = dA.as<double>(size_t(n * n));
  int* info = dinfo.as<int>(2);
  LLMC_CU(cudaMemcpyAsync(H, job.h, size_t(n * n) * sizeof(double), cudaMemcpyHostToDevice, st));

  // 1. U = chol((H + λI)⁻¹)ᵀ with damping retries.
  int lwork = 0, lw2 = 0;
  check_cusolver(so.dpotrf_buffer_size(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lwork),
                 "cusolverDnDpotrf_bufferSize");
  check_cusolver(so.dpotri_buffer_size(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lw2),
                 "cusolverDnDpotri_bufferSize");
  lwork = std::max(std::max(lwork, lw2), 1);
  double* work = dwork.as<double>(size_t(lwork));
  float* U = dU.as<float>(size_t(n * n));
  auto info_ok = [&]() {
    int h = 0;
    LLMC_CU(cudaMemcpyAsync(&h, info, sizeof(int), cudaMemcpyDeviceToHost, st));
    LLMC_CU(cudaStreamSynchronize(st));
    return h == 0;
  };
  const unsigned gb = grid_for(n * n, 256);
  bool ok = false;
  double damp = job.damp;
  for (int t = 0; t <= job.damp_retries && !ok; ++t, damp *= 10.0) {
    job.damp_used = damp;
    LLMC_CU(cudaMemcpyAsync(A, H, size_t(n * n) * sizeof(double), cudaMemcpyDeviceToDevice, st));
    add_diag_kernel<<<grid_for(n, 256), 256, 0, st>>>(A, n, damp * job.mean_diag);
    LLMC_CU_LAUNCH("add_diag_kernel");
    check_cusolver(so.dpotrf(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), work, lwork, info),
                   "cusolverDnDpotrf");
    if (!info_ok()) continue;
    check_cusolver(so.dpotri(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), work, lwork, info),
                   "cusolverDnDpotri");
    if (!info_ok()) continue;
    mirror_lower_kernel<<<gb, 256, 0, st>>>(A, n);
    LLMC_CU_LAUNCH("mirror_lower_kernel");
    check_cusolver(so.dpotrf(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), work, lwork, info),
                   "cusolverDnDpotrf");
    if (!info_ok()) continue;
    LLMC_CU(cudaMemsetAsync(info + 1, 0, sizeof(int), st));
    make_u_kernel<<<gb, 256, 0, st>>>(A, n, U, info + 1);
    LLMC_CU_LAUNCH("make_u_kernel");
    int bad = 0;
    LLMC_CU(cudaMemcpyAsync(&bad, info + 1, sizeof(int), cudaMemcpyDeviceToHost, st));
    LLMC_CU(cudaStreamSynchronize(st));
    ok = bad == 0;
  }
  dA.reset();
  dH.reset();
  if (!ok) return false;

  // 2. The column loop.
  int64_t B = job.block;
  if (B > kMaxBatch) {
    if (!job.params_given) fail("cuda_gptq_solve: group ", job.group, " exceeds ", kMaxBatch);
    B = kGivenBatch;  // the parameters do not depend on the batch
  }
  B = std::min(B, n);
  float* W = dW.as<float>(size_t(out * n));
  float* E = dE.as<float>(size_t(out * B));
  int32_t* codes = dcodes.as<int32_t>(size_t(out * n));
  const int64_t nparams = job.param_stride == 0 ? 1
                          : out * job.param_stride;
  float* scales = dscales.as<float>(size_t(nparams));
  int32_t* zeros = job.zeros ? dzeros.as<int32_t>(size_t(nparams)) : nullptr;
  LLMC_CU(cudaMemcpyAsync(W, job.w, size_t(out * n) * sizeof(float), cudaMemcpyHostToDevice, st));
  if (job.params_given) {
    LLMC_CU(cudaMemcpyAsync(scales, job.scales, size_t(nparams) * sizeof(float),
                            cudaMemcpyHostToDevice, st));
    if (zeros)
      LLMC_CU(cudaMemcpyAsync(zeros, job.zeros, size_t(nparams) * sizeof(int32_t),
                              cudaMemcpyHostToDevice, st));
  }
  int32_t* gidx = nullptr;
  if (job.gidx) {
    gidx = dgidx.as<int32_t>(size_t(n));
    LLMC_CU(cudaMemcpyAsync(gidx, job.gidx, size_t(n) * sizeof(int32_t), cudaMemcpyHostToDevice, st));
  }
  float* imp = nullptr;
  if (job.imp) {
    imp = dimp.as<float>(size_t(n));
    LLMC_CU(cudaMemcpyAsync(imp, job.imp, size_t(n) * sizeof(float), cudaMemcpyHostToDevice, st));
  }
  ColArgs a{};
  a.g = GridDev{job.fp8 ? 1 : 0, job.bits, job.symmetric ? 1 : 0, job.sym_full_range ? 1 : 0,
                job.fp16_scales ? 1 : 0, job.search_steps, job.min_shrink};
  a.out = out;
  a.n = n;
  a.group = job.group;
  a.stride = job.param_stride;
  a.ldE = B;
  a.params_given = job.params_given ? 1 : 0;
  a.gidx = gidx;
  a.imp = imp;
  a.W = W;
  a.U = U;
  a.E = E;
  a.codes = codes;
  a.scales = scales;
  a.zeros = zeros;
  LLMC_CU(cublas().set_stream(c.blas, st));
  LLMC_CU(cublas().set_math_mode(c.blas, CUBLAS_DEFAULT_MATH));
  const unsigned nblocks = unsigned((out + kRows - 1) / kRows);
  const float minus_one = -1.0f, one = 1.0f;
  for (int64_t i1 = 0; i1 < n; i1 += B) {
    const int64_t i2 = std::min(i1 + B, n), bw = i2 - i1;
    a.i1 = i1;
    a.bw = bw;
    columns_kernel<<<nblocks, kThreads, size_t(kRows * bw) * sizeof(float), st>>>(a);
    LLMC_CU_LAUNCH("columns_kernel");
    if (i2 < n) {
      // Column-major view: W[:, i2:]ᵀ ((n - i2) × out, ld n) -= U[i1:i2, i2:]ᵀ · Eᵀ.
      LLMC_CU(cublas().sgemm(c.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(n - i2), int(out), int(bw),
                             &minus_one, U + i1 * n + i2, int(n), E, int(B), &one, W + i2,
                             int(n)));
    }
  }
  LLMC_CU(cudaMemcpyAsync(job.codes, codes, size_t(out * n) * sizeof(int32_t),
                          cudaMemcpyDeviceToHost, st));
  if (!job.params_given) {
    LLMC_CU(cudaMemcpyAsync(job.scales, scales, size_t(nparams) * sizeof(float),
                            cudaMemcpyDeviceToHost, st));
    if (zeros)
      LLMC_CU(cudaMemcpyAsync(job.zeros, zeros, size_t(nparams) * sizeof(int32_t),
                              cudaMemcpyDeviceToHost, st));
  }
  LLMC_CU(cudaStreamSynchronize(st));
  return true;
}

}  // namespace llmc::backend::cuda
