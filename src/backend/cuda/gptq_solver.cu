// backend/cuda/gptq_solver.cu — the GPTQ column solver on the GPU (backend/backend.h
// cuda_gptq_solve): fp64 inverse Cholesky by cuSOLVER with damping retries, the lazy-batch
// column loop as one kernel per batch, the trailing update as a cuBLAS sgemm. The grid rules
// below are quant/grid.cpp's (and core/dtype.cpp's fp16/fp8 conversions), written for the
// device; tests/test_cuda.cpp compares this solver with the CPU one.
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_context.cuh"
#include "backend/cuda/reduce_device.cuh"
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
  float lo, hi;
  warp_range(len, lane, [&](int64_t i) { return v[i]; }, &lo, &hi);
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
  float* W;  // modified by the trailing update (run_columns)
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

// Natural W [out, n] -> Wz (dead columns zeroed, natural order) and Wp (processing order).
__global__ void prep_w_kernel(const float* W, int64_t out, int64_t n, const int32_t* perm,
                              const uint8_t* dead, float* Wz, float* Wp) {
  const int64_t total = out * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / n, j = e % n;
    Wz[e] = dead[j] ? 0.0f : W[e];
    const int32_t pj = perm[j];
    Wp[e] = dead[pj] ? 0.0f : W[r * n + pj];
  }
}

// hp[j, k] = H[perm j, perm k], a dead column's diagonal 1.
__global__ void perm_h_kernel(const double* H, int64_t n, const int32_t* perm,
                              const uint8_t* dead, const double* hadd, double* hp) {
  const int64_t total = n * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e / n, k = e % n;
    const int32_t pj = perm[j];
    const double h = H[int64_t(pj) * n + perm[k]];
    hp[e] = (j == k && dead[pj]) ? 1.0 : (j == k && hadd) ? h + hadd[pj] : h;
  }
}

// impp[j] = impn[perm j]; gidx[j] = perm j / gs (static groups) when gidx != null.
__global__ void perm_vec_kernel(const float* impn, const int32_t* perm, int64_t n, int64_t gs,
                                float* impp, int32_t* gidx) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x) {
    if (impp) impp[j] = impn[perm[j]];
    if (gidx) gidx[j] = int32_t(perm[j] / gs);
  }
}

// quant/grid.cpp group_params for every (row, natural group) of W [out, n]: one warp each.
__global__ void params_kernel(GridDev g, const float* W, int64_t out, int64_t n, int64_t gs,
                              const float* imp, float* scales, int32_t* zeros) {
  const int64_t ng = (n + gs - 1) / gs;
  const int64_t warps = out * ng;
  const int lane = threadIdx.x % 32;
  for (int64_t wi = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; wi < warps;
       wi += int64_t(gridDim.x) * blockDim.x / 32) {
    const int64_t r = wi / ng, gi = wi % ng, c0 = gi * gs;
    const int64_t len = gs < n - c0 ? gs : n - c0;
    float s;
    int32_t z;
    group_params_warp(g, W + r * n + c0, len, imp ? imp + c0 : nullptr, lane, &s, &z);
    if (lane == 0) {
      scales[wi] = s;
      if (zeros) zeros[wi] = z;
    }
  }
}

// Codes of the solve (processing order) -> natural-order code bytes, and (x != null) the
// decoded values minus the original weights, x[r, perm j] = value - W[r, perm j].
__global__ void decode_kernel(GridDev g, const int32_t* codes, int64_t out, int64_t n,
                              const int32_t* perm, const float* scales, const int32_t* zeros,
                              int64_t stride, int params_given, const int32_t* gidx,
                              int64_t group, const float* W, uint8_t* bytes, float* x) {
  const int64_t total = out * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / n, j = e % n;
    const int32_t c = codes[e];
    const int64_t nat = r * n + perm[j];
    bytes[nat] = uint8_t(uint32_t(c) & 0xffu);
    if (x) {
      const int64_t p = r * stride + (params_given ? (gidx ? gidx[j] : 0) : (group > 0 ? j / group : 0));
      x[nat] = grid_value(g, c, scales[p], zeros ? zeros[p] : 0) - W[nat];
    }
  }
}

// Round to nearest of Wz (natural) with parameters at r · stride + c / gs, minus W.
__global__ void rtn_diff_kernel(GridDev g, const float* Wz, const float* W, int64_t out, int64_t n,
                                int64_t gs, int64_t stride, const float* scales,
                                const int32_t* zeros, float* x) {
  const int64_t total = out * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / n, cidx = e % n;
    const int64_t p = r * stride + cidx / gs;
    const float s = scales[p];
    const int32_t z = zeros ? zeros[p] : 0;
    x[e] = grid_value(g, grid_code(g, Wz[e], s, z), s, z) - W[e];
  }
}

__global__ void to_f32_kernel(const double* a, int64_t n, float* b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    b[i] = float(a[i]);
}

// q[r] = Σ_k x[r, k] · m[r, k] in fp64, one warp per row.
__global__ void row_dot_kernel(const float* x, const float* m, int64_t rows, int64_t n, double* q) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    double s = 0;
    for (int64_t k = lane; k < n; k += 32) s += double(x[r * n + k]) * double(m[r * n + k]);
    s = warp_sum(s);
    if (lane == 0) q[r] = s;
  }
}

// Grow-only buffers of the solver, kept between layers (no cudaMalloc/cudaFree per layer);
// deliberately never destroyed (the process' exit releases the device).
struct SolverBufs {
  DevBuf H, HP, A, U, W, Wn, Wz, E, codes, scales, zeros, gidx, imp, impn, perm, dead, work, info,
      bytes, rs, rz, Hf, X, M, q, hadd, Wr;
};
SolverBufs& bufs() {
  static SolverBufs* b = new SolverBufs;
  return *b;
}

unsigned elem_grid(int64_t n) { return grid_for(n, 256); }
unsigned warp_grid(int64_t warps) { return grid_for(warps * 32, 256); }

// Step 1 on device arrays: U = chol((hp + λI)⁻¹)ᵀ (fp32, row-major) with damping retries;
// hp is left intact. The caller holds the lock.
bool factor(cudaStream_t st, const double* hp, int64_t n, double damp, double mean_diag,
            int retries, float* U, double* damp_used) {
  SolverBufs& b = bufs();
  const CusolverApi& so = cusolver();
  cusolverDnHandle_t sh = cusolver_handle();
  check_cusolver(so.set_stream(sh, st), "cusolverDnSetStream");
  double* A = b.A.as<double>(size_t(n * n));
  int* info = b.info.as<int>(2);
  int lwork = 0, lw2 = 0;
  check_cusolver(so.dpotrf_buffer_size(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lwork),
                 "cusolverDnDpotrf_bufferSize");
  check_cusolver(so.dpotri_buffer_size(sh, CUBLAS_FILL_MODE_LOWER, int(n), A, int(n), &lw2),
                 "cusolverDnDpotri_bufferSize");
  lwork = std::max(std::max(lwork, lw2), 1);
  double* work = b.work.as<double>(size_t(lwork));
  auto info_ok = [&]() {
    int h = 0;
    LLMC_CU(cudaMemcpyAsync(&h, info, sizeof(int), cudaMemcpyDeviceToHost, st));
    LLMC_CU(cudaStreamSynchronize(st));
    return h == 0;
  };
  const unsigned gb = grid_for(n * n, 256);
  for (int t = 0; t <= retries; ++t, damp *= 10.0) {
    *damp_used = damp;
    LLMC_CU(cudaMemcpyAsync(A, hp, size_t(n * n) * sizeof(double), cudaMemcpyDeviceToDevice, st));
    add_diag_kernel<<<grid_for(n, 256), 256, 0, st>>>(A, n, damp * mean_diag);
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
    if (bad == 0) return true;
  }
  return false;
}

// The lazy batch size of the column loop for a job.
int64_t batch_of(const GptqSolveJob& job) {
  int64_t B = job.block;
  if (B > kMaxBatch) {
    if (!job.params_given) fail("cuda_gptq_solve: group ", job.group, " exceeds ", kMaxBatch);
    B = kGivenBatch;  // the parameters do not depend on the batch
  }
  return std::min(B, job.n);
}

// Steps 2-3 on device arrays (a.W is modified; a.E holds out · B floats).
void run_columns(Context& c, cudaStream_t st, ColArgs a, int64_t B) {
  const int64_t out = a.out, n = a.n;
  a.ldE = B;
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
                             &minus_one, a.U + i1 * n + i2, int(n), a.E, int(B), &one, a.W + i2,
                             int(n)));
    }
  }
}

GridDev grid_of(const GptqSolveJob& job) {
  return GridDev{job.fp8 ? 1 : 0, job.bits, job.symmetric ? 1 : 0, job.sym_full_range ? 1 : 0,
                 job.fp16_scales ? 1 : 0, job.search_steps, job.min_shrink};
}

template <typename T>
T* upload_to(DevBuf& d, const T* h, int64_t count, cudaStream_t st) {
  T* p = d.as<T>(size_t(std::max<int64_t>(count, 1)));
  LLMC_CU(cudaMemcpyAsync(p, h, size_t(count) * sizeof(T), cudaMemcpyHostToDevice, st));
  return p;
}

}  // namespace

bool gptq_solve(GptqSolveJob& job) {
  Context& c = ctx();
  std::lock_guard<std::mutex> lock(c.mu);
  const int64_t out = job.out, n = job.n;
  cudaStream_t st = c.s[0];
  SolverBufs& b = bufs();
  const double* H = upload_to(b.HP, job.h, n * n, st);
  float* U = b.U.as<float>(size_t(n * n));
  if (!factor(st, H, n, job.damp, job.mean_diag, job.damp_retries, U, &job.damp_used))
    return false;

  const int64_t B = batch_of(job);
  const int64_t nparams = job.param_stride == 0 ? 1 : out * job.param_stride;
  ColArgs a{};
  a.g = grid_of(job);
  a.out = out;
  a.n = n;
  a.group = job.group;
  a.stride = job.param_stride;
  a.params_given = job.params_given ? 1 : 0;
  a.W = upload_to(b.W, job.w, out * n, st);
  a.U = U;
  a.E = b.E.as<float>(size_t(out * B));
  a.codes = b.codes.as<int32_t>(size_t(out * n));
  a.scales = b.scales.as<float>(size_t(nparams));
  a.zeros = job.zeros ? b.zeros.as<int32_t>(size_t(nparams)) : nullptr;
  if (job.params_given) {
    upload_to(b.scales, job.scales, nparams, st);
    if (a.zeros) upload_to(b.zeros, job.zeros, nparams, st);
  }
  a.gidx = job.gidx ? upload_to(b.gidx, job.gidx, n, st) : nullptr;
  a.imp = job.imp ? upload_to(b.imp, job.imp, n, st) : nullptr;
  run_columns(c, st, a, B);
  LLMC_CU(cudaMemcpyAsync(job.codes, a.codes, size_t(out * n) * sizeof(int32_t),
                          cudaMemcpyDeviceToHost, st));
  if (!job.params_given) {
    LLMC_CU(cudaMemcpyAsync(job.scales, a.scales, size_t(nparams) * sizeof(float),
                            cudaMemcpyDeviceToHost, st));
    if (a.zeros)
      LLMC_CU(cudaMemcpyAsync(job.zeros, a.zeros, size_t(nparams) * sizeof(int32_t),
                              cudaMemcpyDeviceToHost, st));
  }
  LLMC_CU(cudaStreamSynchronize(st));
  return true;
}

bool gptq_layer(GptqLayerJob& job) {
  GptqSolveJob& s = job.solve;
  Context& c = ctx();
  std::lock_guard<std::mutex> lock(c.mu);
  cudaStream_t st = c.s[0];
  SolverBufs& b = bufs();
  const int64_t out = s.out, n = s.n, on = out * n;
  const GridDev g = grid_of(s);
  const int64_t gs = s.group > 0 ? s.group : n;
  const int64_t stride = s.param_stride;
  const int64_t nparams = stride == 0 ? 1 : out * stride;

  // Inputs, once.
  const float* Wn = upload_to(b.Wn, job.w, on, st);
  const double* H = upload_to(b.H, job.h, n * n, st);
  const int32_t* perm = upload_to(b.perm, job.perm, n, st);
  const uint8_t* dead = upload_to(b.dead, job.dead, n, st);
  const double* hadd = job.h_add ? upload_to(b.hadd, job.h_add, n, st) : nullptr;
  const float* Wr = job.w_ref ? upload_to(b.Wr, job.w_ref, on, st) : Wn;
  const float* impn = job.imp_nat ? upload_to(b.impn, job.imp_nat, n, st) : nullptr;

  // Processing order.
  float* Wz = b.Wz.as<float>(size_t(on));
  float* Wp = b.W.as<float>(size_t(on));
  prep_w_kernel<<<elem_grid(on), 256, 0, st>>>(Wn, out, n, perm, dead, Wz, Wp);
  LLMC_CU_LAUNCH("prep_w_kernel");
  double* hp = b.HP.as<double>(size_t(n * n));
  perm_h_kernel<<<elem_grid(n * n), 256, 0, st>>>(H, n, perm, dead, hadd, hp);
  LLMC_CU_LAUNCH("perm_h_kernel");

  // Parameters known before the solve.
  float* scales = b.scales.as<float>(size_t(nparams));
  int32_t* zeros = s.zeros ? b.zeros.as<int32_t>(size_t(nparams)) : nullptr;
  int32_t* gidx = job.static_groups ? b.gidx.as<int32_t>(size_t(n)) : nullptr;
  float* impp = (impn && !s.fp8 && s.group > 0 && !job.static_groups)
                    ? b.imp.as<float>(size_t(n)) : nullptr;
  if (impp || gidx) {
    perm_vec_kernel<<<elem_grid(n), 256, 0, st>>>(impn, perm, n, gs, impp, gidx);
    LLMC_CU_LAUNCH("perm_vec_kernel");
  }
  bool given = true;
  if (s.fp8) {
    upload_to(b.scales, job.fixed_scales, nparams, st);
  } else if (job.static_groups || s.group <= 0) {
    params_kernel<<<warp_grid(out * ((n + gs - 1) / gs)), 256, 0, st>>>(g, Wz, out, n, gs, impn,
                                                                        scales, zeros);
    LLMC_CU_LAUNCH("params_kernel");
  } else {
    given = false;  // dynamic groups: formed by the column loop
  }

  // Steps 1-3.
  float* U = b.U.as<float>(size_t(n * n));
  if (!factor(st, hp, n, s.damp, s.mean_diag, s.damp_retries, U, &s.damp_used)) return false;
  s.params_given = given;
  const int64_t B = batch_of(s);
  ColArgs a{};
  a.g = g;
  a.out = out;
  a.n = n;
  a.group = s.group;
  a.stride = stride;
  a.params_given = given ? 1 : 0;
  a.gidx = gidx;
  a.imp = impp;
  a.W = Wp;
  a.U = U;
  a.E = b.E.as<float>(size_t(out * B));
  a.codes = b.codes.as<int32_t>(size_t(on));
  a.scales = scales;
  a.zeros = zeros;
  run_columns(c, st, a, B);

  // Natural-order code bytes (and the result's error rows).
  const int rows_x = job.report ? (job.report_rtn ? 3 : 2) : 0;
  float* X = rows_x ? b.X.as<float>(size_t(rows_x * on)) : nullptr;
  uint8_t* bytes = b.bytes.as<uint8_t>(size_t(on));
  decode_kernel<<<elem_grid(on), 256, 0, st>>>(g, a.codes, out, n, perm, scales, zeros, stride,
                                               a.params_given, gidx, s.group, Wr, bytes,
                                               X ? X + on : nullptr);
  LLMC_CU_LAUNCH("decode_kernel");
  LLMC_CU(cudaMemcpyAsync(job.code_bytes, bytes, size_t(on), cudaMemcpyDeviceToHost, st));
  LLMC_CU(cudaMemcpyAsync(s.scales, scales, size_t(nparams) * sizeof(float),
                          cudaMemcpyDeviceToHost, st));
  if (zeros && s.zeros)
    LLMC_CU(cudaMemcpyAsync(s.zeros, zeros, size_t(nparams) * sizeof(int32_t),
                            cudaMemcpyDeviceToHost, st));

  if (X) {
    LLMC_CU(cudaMemcpyAsync(X, Wr, size_t(on) * sizeof(float), cudaMemcpyDeviceToDevice, st));
    if (job.report_rtn) {
      // Plain RTN on the same grid: quant/gptq.cpp rtn_on_grid (of w_ref with ref_scales).
      float* rs = b.rs.as<float>(size_t(nparams));
      int32_t* rz = zeros ? b.rz.as<int32_t>(size_t(nparams)) : nullptr;
      if (job.w_ref) {
        upload_to(b.rs, job.ref_scales, nparams, st);
      } else if (s.fp8) {
        upload_to(b.rs, job.fixed_scales, nparams, st);
      } else {
        params_kernel<<<warp_grid(out * ((n + gs - 1) / gs)), 256, 0, st>>>(g, Wz, out, n, gs,
                                                                            impn, rs, rz);
        LLMC_CU_LAUNCH("params_kernel");
      }
      rtn_diff_kernel<<<elem_grid(on), 256, 0, st>>>(g, job.w_ref ? Wr : Wz, Wr, out, n, gs,
                                                     stride, rs, rz, X + 2 * on);
      LLMC_CU_LAUNCH("rtn_diff_kernel");
    }
    // q_r = x_r H x_rᵀ: x · H (fp32 GEMM, H symmetric), then fp64 row dots.
    float* Hf = b.Hf.as<float>(size_t(n * n));
    to_f32_kernel<<<elem_grid(n * n), 256, 0, st>>>(H, n * n, Hf);
    LLMC_CU_LAUNCH("to_f32_kernel");
    const int64_t R = rows_x * out;
    float* M = b.M.as<float>(size_t(R * n));
    const float one = 1.0f, zero = 0.0f;
    LLMC_CU(cublas().set_stream(c.blas, st));
    LLMC_CU(cublas().set_math_mode(c.blas, CUBLAS_DEFAULT_MATH));
    LLMC_CU(cublas().sgemm(c.blas, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(R), int(n), &one, Hf,
                           int(n), X, int(n), &zero, M, int(n)));
    double* q = b.q.as<double>(size_t(R));
    row_dot_kernel<<<warp_grid(R), 256, 0, st>>>(X, M, R, n, q);
    LLMC_CU_LAUNCH("row_dot_kernel");
    job.row_quads.assign(static_cast<size_t>(R), 0.0);
    LLMC_CU(cudaMemcpyAsync(job.row_quads.data(), q, size_t(R) * sizeof(double),
                            cudaMemcpyDeviceToHost, st));
  }
  LLMC_CU(cudaStreamSynchronize(st));
  return true;
}

}  // namespace llmc::backend::cuda
