// backend/cuda/block_kernels.cu — device arrays and the decoder-block primitives of the GPU
// block runner (backend.h "device-resident arrays"): RMSNorm, RoPE, causal GQA attention
// (cuBLAS strided-batched QKᵀ / PV per query chunk, fp32 softmax kernel with an fp64 sum),
// SwiGLU, residual adds, linears on device buffers, and the reductions statistics need.
//
// Every operation is enqueued on the context's stream 0, in call order; the calls returning
// host data synchronize that stream. Compiled without fast-math: expf, IEEE division and
// sqrt, so each element follows the CPU kernel's formula (backend/cpu/kernels.cpp) and the
// results differ only by summation order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_context.cuh"
#include "backend/cuda/reduce_device.cuh"
#include "core/error.h"

namespace llmc::backend::cuda {

namespace {

uint64_t g_peak_used = 0;

// Scratch of this file's asynchronous operations (not shared with the synchronous calls of
// the other files, which may regrow their buffers while these kernels are queued). Never
// destroyed, like the context.
enum Scratch { kAttnScores = 0, kReduce = 1, kColSums = 2, kNumScratch = 3 };
DevBuf& scratch(Scratch which) {
  static DevBuf* b = new DevBuf[kNumScratch];
  return b[which];
}

__device__ float block_max(float v) {
  __shared__ float red[32];
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -INFINITY;
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float r = red[0];
  __syncthreads();
  return r;
}

// cpu::rms_norm: var = float(Σx² / dim) (sum in fp64), inv = float(1 / sqrt(double(var + eps))),
// y = w * (x * inv).
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                int64_t rows, int64_t dim, float eps, float* y) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * dim;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += double(xr[i]) * double(xr[i]);
    ss = block_sum(ss);
    const float var = float(ss / double(dim));
    const float inv = float(1.0 / sqrt(double(__fadd_rn(var, eps))));
    float* yr = y + r * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
      yr[i] = __fmul_rn(w[i], __fmul_rn(xr[i], inv));
  }
}

// cpu::rope_apply (pos0 = 0): one thread per (row, head, i < half).
__global__ void rope_kernel(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq,
                            const float* __restrict__ cs, const float* __restrict__ sn) {
  const int half = hd / 2;
  const int64_t total = rows * heads * half;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int i = int(e % half);
    const int64_t rh = e / half;
    const int h = int(rh % heads);
    const int64_t r = rh / heads;
    const int pos = int(r % seq);
    float* a = x + r * stride + int64_t(h) * hd;
    const float c = cs[int64_t(pos) * half + i], s = sn[int64_t(pos) * half + i];
    const float x1 = a[i], x2 = a[i + half];
    a[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    a[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

// Rows of `nmat` matrices [m, tk] (row-major, contiguous): row i of each keeps keys
// 0 .. i0 + i (softmax, fp32 exp, fp64 sum), the rest is set to 0.
__global__ void causal_softmax_kernel(float* s, int64_t nmat, int m, int tk, int i0) {
  const int64_t nrows = nmat * m;
  for (int64_t rr = blockIdx.x; rr < nrows; rr += gridDim.x) {
    const int i = int(rr % m);
    float* row = s + rr * tk;
    const int n = i0 + i + 1;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = block_max(mx);
    double sum = 0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const float e = expf(__fsub_rn(row[j], mx));
      row[j] = e;
      sum += double(e);
    }
    sum = block_sum(sum);
    const float inv = float(1.0 / sum);
    for (int j = threadIdx.x; j < tk; j += blockDim.x) row[j] = j < n ? __fmul_rn(row[j], inv) : 0.0f;
  }
}

__global__ void silu_mul_kernel(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const float x = g[e];
    out[e] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, expf(-x))), u[e]);
  }
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x)
    y[e] = __fadd_rn(y[e], x[e]);
}

__global__ void bias_kernel(float* y, int64_t rows, int64_t n, const float* b) {
  const int64_t total = rows * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    y[e] = __fadd_rn(y[e], b[e % n]);
}

// Non-negative floats order like their bit patterns: max via atomicMax on the bits.
__global__ void abs_max_kernel(const float* x, int64_t n, unsigned int* out) {
  float m = 0.0f;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(x[e]));  // fmaxf drops NaN, as std::max(m, NaN) keeps m
  m = block_max(m);
  if (threadIdx.x == 0) atomicMax(out, __float_as_uint(m));
}

// XOR over elements of a 64-bit mix of (bits, index): order-free, so deterministic.
__global__ void fingerprint_kernel(const float* x, int64_t n, unsigned long long* out) {
  unsigned long long acc = 0;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    unsigned long long z = (unsigned long long)__float_as_uint(x[e]) ^
                           ((unsigned long long)e * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    acc ^= z ^ (z >> 31);
  }
  for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) atomicXor(out, acc);
}

// sums[c] += Σ |x[r, c]| over the block's row range.
__global__ void col_abs_sum_kernel(const float* x, int64_t rows, int64_t cols, int64_t rows_per,
                                   double* sums) {
  const int64_t r0 = blockIdx.y * rows_per, r1 = min(rows, r0 + rows_per);
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols;
       c += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t r = r0; r < r1; ++r) s += double(fabsf(x[r * cols + c]));
    atomicAdd(sums + c, s);
  }
}

void set_blas(Context& c, bool tf32) {
  LLMC_CU(cublas().set_stream(c.blas, c.s[0]));
  LLMC_CU(cublas().set_math_mode(c.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

}  // namespace

void sample_memory_use() noexcept {
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  g_peak_used = std::max<uint64_t>(g_peak_used, uint64_t(t - f));
}

float* dev_alloc(int64_t n) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  void* p = nullptr;
  const size_t bytes = size_t(std::max<int64_t>(n, 1)) * sizeof(float);
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {  // the weight cache may hold what is needed
    cudaGetLastError();
    c.cache.clear();
    e = cudaMalloc(&p, bytes);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("CUDA: cannot allocate ", bytes, " bytes on the GPU (", cudaGetErrorString(e), ")");
  }
  sample_memory_use();
  return static_cast<float*>(p);
}

void dev_free(float* p) noexcept {
  if (!p) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  cudaStreamSynchronize(c.s[0]);
  cudaFree(p);
}

void dev_upload(float* d, const float* h, int64_t n) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaMemcpyAsync(d, h, size_t(n) * sizeof(float), cudaMemcpyHostToDevice, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));  // the host buffer may be reused at once
}

void dev_download(float* h, const float* d, int64_t n) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaMemcpyAsync(h, d, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
}

void dev_copy(float* dst, const float* src, int64_t n) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, c.s[0]));
}

uint64_t free_bytes() {
  ctx();
  size_t f = 0, t = 0;
  LLMC_CU(cudaMemGetInfo(&f, &t));
  return f;
}

uint64_t peak_used_bytes() { return g_peak_used; }
void note_memory() {
  ctx();
  sample_memory_use();
}

void blk_gemm(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              const float* bias, bool tf32) {
  if (rows <= 0) return;
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  if (k > kMax || n > kMax || rows > kMax) fail("device gemm: unsupported shape");
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  sgemm_xwt(c, c.s[0], x, rows, k, w, n, y, tf32);
  if (bias) {
    bias_kernel<<<grid_for(rows * n, 256), 256, 0, c.s[0]>>>(y, rows, n, bias);
    LLMC_CU_LAUNCH("bias_kernel");
  }
}

void blk_rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, double eps, float* y) {
  if (rows <= 0) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const int threads = dim <= 256 ? 64 : 256;
  rms_norm_kernel<<<grid_for(rows, 1, 1 << 20), threads, 0, c.s[0]>>>(x, w, rows, dim, float(eps), y);
  LLMC_CU_LAUNCH("rms_norm_kernel");
}

void blk_rope(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq, const float* cs,
              const float* sn) {
  if (rows <= 0) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  rope_kernel<<<grid_for(rows * heads * (hd / 2), 256), 256, 0, c.s[0]>>>(x, rows, stride, heads,
                                                                        hd, seq, cs, sn);
  LLMC_CU_LAUNCH("rope_kernel");
}

void blk_attention(const float* q, const float* k, const float* v, int batch, int seq, int heads,
                   int kv_heads, int hd, float* out, bool tf32) {
  if (heads % kv_heads) fail("attention: ", heads, " heads are not a multiple of ", kv_heads);
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  constexpr int kQChunk = 256;
  const int grp = heads / kv_heads;
  const int64_t qd = int64_t(heads) * hd, kvd = int64_t(kv_heads) * hd;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  const float one = 1.0f, zero = 0.0f;
  const int mchunk = std::min(kQChunk, seq);
  DevBuf& sb = scratch(kAttnScores);
  const size_t need = size_t(kv_heads) * mchunk * seq * sizeof(float);
  if (need > 0) LLMC_CU(cudaStreamSynchronize(c.s[0]));  // a regrow must not free queued work's memory
  float* S = static_cast<float*>(sb.get(need));
  set_blas(c, tf32);
  for (int b = 0; b < batch; ++b) {
    const float* qb = q + int64_t(b) * seq * qd;
    const float* kb = k + int64_t(b) * seq * kvd;
    const float* vb = v + int64_t(b) * seq * kvd;
    float* ob = out + int64_t(b) * seq * qd;
    for (int i0 = 0; i0 < seq; i0 += kQChunk) {
      const int i1 = std::min(seq, i0 + kQChunk), m = i1 - i0, tk = i1;
      for (int gi = 0; gi < grp; ++gi) {
        // Sᵀ (column-major [tk, m]) = K_j · Q_hᵀ for h = j * grp + gi, batched over j.
        LLMC_CU(cublas().sgemm_strided_batched(
            c.blas, CUBLAS_OP_T, CUBLAS_OP_N, tk, m, hd, &scale, kb, int(kvd), hd,
            qb + int64_t(i0) * qd + int64_t(gi) * hd, int(qd), int64_t(grp) * hd, &zero, S, tk,
            int64_t(m) * tk, kv_heads));
        causal_softmax_kernel<<<grid_for(int64_t(kv_heads) * m, 1, 1 << 20), 128, 0, c.s[0]>>>(
            S, kv_heads, m, tk, i0);
        LLMC_CU_LAUNCH("causal_softmax_kernel");
        // O_hᵀ (column-major [hd, m]) = V_jᵀ · Pᵀ.
        LLMC_CU(cublas().sgemm_strided_batched(
            c.blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, m, tk, &one, vb, int(kvd), hd, S, tk,
            int64_t(m) * tk, &zero, ob + int64_t(i0) * qd + int64_t(gi) * hd, int(qd),
            int64_t(grp) * hd, kv_heads));
      }
    }
  }
}

void blk_silu_mul(const float* gt, const float* u, float* out, int64_t n) {
  if (n <= 0) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  silu_mul_kernel<<<grid_for(n, 256), 256, 0, c.s[0]>>>(gt, u, out, n);
  LLMC_CU_LAUNCH("silu_mul_kernel");
}

void blk_add(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  add_kernel<<<grid_for(n, 256), 256, 0, c.s[0]>>>(y, x, n);
  LLMC_CU_LAUNCH("add_kernel");
}

float blk_abs_max(const float* x, int64_t n) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  unsigned int* d = static_cast<unsigned int*>(scratch(kReduce).get(sizeof(unsigned int)));
  LLMC_CU(cudaMemsetAsync(d, 0, sizeof(unsigned int), c.s[0]));
  if (n > 0) {
    abs_max_kernel<<<grid_for(n, 256, 4096), 256, 0, c.s[0]>>>(x, n, d);
    LLMC_CU_LAUNCH("abs_max_kernel");
  }
  unsigned int bits = 0;
  LLMC_CU(cudaMemcpyAsync(&bits, d, sizeof(bits), cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
  float r;
  std::memcpy(&r, &bits, sizeof(r));
  return r;
}

uint64_t blk_fingerprint(const float* x, int64_t n) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  auto* d = static_cast<unsigned long long*>(scratch(kReduce).get(sizeof(unsigned long long)));
  LLMC_CU(cudaMemsetAsync(d, 0, sizeof(unsigned long long), c.s[0]));
  if (n > 0) {
    fingerprint_kernel<<<grid_for(n, 256, 4096), 256, 0, c.s[0]>>>(x, n, d);
    LLMC_CU_LAUNCH("fingerprint_kernel");
  }
  unsigned long long r = 0;
  LLMC_CU(cudaMemcpyAsync(&r, d, sizeof(r), cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
  return uint64_t(r) ^ uint64_t(n);
}

void blk_act_quant(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || act == ActQuant::None) return;
  float ts = 1.0f;
  if (act == ActQuant::FP8StaticTensor || act == ActQuant::INT8StaticTensor) {
    if (!std::isfinite(static_scale) || static_scale <= 0.0f)
      fail("activation quantization ", act_quant_name(act),
           ": static input scale must be finite and > 0, got ", static_scale);
    ts = static_scale;
  } else if (act == ActQuant::FP8DynamicTensor) {
    const float m = blk_abs_max(x, rows * cols);
    ts = (m > 0.0f && std::isfinite(m) && m / 448.0f > 0.0f) ? m / 448.0f : 1.0f;
  }
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  launch_act_quant(act, ts, x, rows, cols, c.s[0]);
}

void blk_col_abs_sum(const float* x, int64_t rows, int64_t cols, double* sums) {
  if (rows <= 0 || cols <= 0) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
  double* d = static_cast<double*>(scratch(kColSums).get(size_t(cols) * sizeof(double)));
  LLMC_CU(cudaMemsetAsync(d, 0, size_t(cols) * sizeof(double), c.s[0]));
  const int64_t rows_per = 256;
  const dim3 grid(unsigned((cols + 255) / 256), unsigned(std::min<int64_t>((rows + rows_per - 1) / rows_per, 65535)));
  const int64_t rp = (rows + grid.y - 1) / grid.y;
  col_abs_sum_kernel<<<grid, 256, 0, c.s[0]>>>(x, rows, cols, rp, d);
  LLMC_CU_LAUNCH("col_abs_sum_kernel");
  std::vector<double> h(static_cast<size_t>(cols));
  LLMC_CU(cudaMemcpyAsync(h.data(), d, size_t(cols) * sizeof(double), cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
  for (int64_t i = 0; i < cols; ++i) sums[i] += h[size_t(i)];
}

void blk_gather_rows(const float* x, int64_t rows, int64_t cols, int64_t first, int64_t stride,
                     float* out, int64_t count) {
  if (count <= 0) return;
  (void)rows;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const size_t w = size_t(cols) * sizeof(float);
  LLMC_CU(cudaMemcpy2DAsync(out, w, x + first * cols, w * size_t(stride), w, size_t(count),
                            cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
}

void blk_sync() {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
}

}  // namespace llmc::backend::cuda
