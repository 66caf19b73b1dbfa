// backend/cuda/cuda_backend.cu — CUDA context, staging pipeline, resident-weight cache, cuBLAS
// GEMM and Xᵀ·X accumulation (backend/cuda/cuda_backend.h).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/cuda_context.cuh"
#include "backend/cuda/dynlib.h"
#include "core/error.h"

namespace llmc::backend::cuda {

void throw_cuda(const char* what, const char* msg) { fail("CUDA error: ", msg, " in ", what); }

void* open_cuda_library(const std::string& soname, const char* what) {
  void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef LLMC_CUDA_LIBRARY_DIR
  if (!lib) lib = dlopen((std::string(LLMC_CUDA_LIBRARY_DIR) + "/" + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
  if (!lib) {
    const char* why = dlerror();
    fail("CUDA backend: cannot load ", soname, " (", why ? why : "not found", "); install ", what,
         " or use --device cpu");
  }
  return lib;
}

const CublasApi& cublas() {
  static const CublasApi api = [] {
    const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = open_cuda_library(name, "cuBLAS");
    CublasApi a{};
    load_symbol(lib, name, "cublasCreate_v2", &a.create);
    load_symbol(lib, name, "cublasSetStream_v2", &a.set_stream);
    load_symbol(lib, name, "cublasSetMathMode", &a.set_math_mode);
    load_symbol(lib, name, "cublasSgemm_v2", &a.sgemm);
    load_symbol(lib, name, "cublasSsyrk_v2", &a.ssyrk);
    load_symbol(lib, name, "cublasSgemmStridedBatched", &a.sgemm_strided_batched);
    load_symbol(lib, name, "cublasDgemm_v2", &a.dgemm);
    load_symbol(lib, name, "cublasGetStatusString", &a.status_string);
    return a;
  }();
  return api;
}

// ---------------------------------------------------------------------------------------------
// Buffers
// ---------------------------------------------------------------------------------------------
void* DevBuf::get(size_t bytes) {
  if (bytes <= cap_ && p_) return p_;
  reset();
  const size_t want = std::max<size_t>(bytes, 256);
  LLMC_CU(cudaMalloc(&p_, want));
  cap_ = want;
  sample_memory_use();
  return p_;
}

void DevBuf::reset() noexcept {
  if (p_) cudaFree(p_);
  p_ = nullptr;
  cap_ = 0;
}

void* PinnedBuf::get(size_t bytes) {
  if (bytes <= cap_ && p_) return p_;
  reset();
  const size_t want = std::max<size_t>(bytes, 4096);
  LLMC_CU(cudaHostAlloc(&p_, want, cudaHostAllocDefault));
  cap_ = want;
  return p_;
}

void PinnedBuf::reset() noexcept {
  if (p_) cudaFreeHost(p_);
  p_ = nullptr;
  cap_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Weight cache
// ---------------------------------------------------------------------------------------------
void WeightCache::evict_until(uint64_t free_needed) {
  while (!map_.empty() && used_ + free_needed > budget_) {
    auto lru = map_.begin();
    for (auto it = map_.begin(); it != map_.end(); ++it)
      if (it->second.tick < lru->second.tick) lru = it;
    cudaFree(lru->second.dev);
    used_ -= lru->second.bytes;
    map_.erase(lru);
    ++st_.evictions;
  }
}

void* WeightCache::get(uint64_t fp, size_t host_bytes, int tag, size_t dev_bytes,
                       cudaStream_t st, const FillFn& fill) {
  const Key key{fp, host_bytes, dev_bytes, tag};
  ++tick_;
  auto it = map_.find(key);
  if (it != map_.end()) {
    it->second.tick = tick_;
    ++st_.hits;
    return it->second.dev;
  }
  ++st_.misses;
  if (dev_bytes > budget_) {  // too large to keep: fill a one-off buffer
    void* d = oversize_.get(dev_bytes);
    fill(d, st);
    LLMC_CU(cudaStreamSynchronize(st));
    return d;
  }
  evict_until(dev_bytes);
  void* d = nullptr;
  cudaError_t e = cudaMalloc(&d, dev_bytes);
  if (e == cudaErrorMemoryAllocation) {  // other allocations grew: make room and retry once
    cudaGetLastError();
    clear();
    e = cudaMalloc(&d, dev_bytes);
  }
  check(e, "cudaMalloc (weight cache)");
  sample_memory_use();
  try {
    fill(d, st);
    LLMC_CU(cudaStreamSynchronize(st));
  } catch (...) {
    cudaFree(d);
    throw;
  }
  Entry en;
  en.dev = d;
  en.bytes = dev_bytes;
  en.tick = tick_;
  map_[key] = en;
  used_ += dev_bytes;
  return d;
}

void WeightCache::clear() noexcept {
  for (auto& kv : map_) cudaFree(kv.second.dev);
  map_.clear();
  used_ = 0;
  oversize_.reset();
}

void WeightCache::set_budget(uint64_t bytes) {
  budget_ = bytes;
  evict_until(0);
}

CacheStats WeightCache::stats() const {
  CacheStats s = st_;
  s.bytes = used_;
  s.entries = map_.size();
  s.budget = budget_;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------------------------
namespace {

uint64_t default_budget() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return uint64_t(1) << 30;
  }
  const char* e = std::getenv("LLMC_CUDA_CACHE_MB");
  if (e && std::atol(e) > 0) return uint64_t(std::atol(e)) << 20;
  return std::min<uint64_t>(uint64_t(4) << 30, free_b / 2);
}

Context* create_context() {
  auto* c = new Context;
  LLMC_CU(cudaGetDevice(&c->dev));
  LLMC_CU(cudaGetDeviceProperties(&c->prop, c->dev));
  LLMC_CU(cublas().create(&c->blas));
  for (int b = 0; b < 2; ++b) {
    LLMC_CU(cudaStreamCreateWithFlags(&c->s[b], cudaStreamNonBlocking));
    LLMC_CU(cudaEventCreateWithFlags(&c->ev_chunk[b], cudaEventDisableTiming));
    LLMC_CU(cudaEventCreateWithFlags(&c->ev_op[b], cudaEventDisableTiming));
  }
  c->cache.set_budget(default_budget());
  return c;
}

}  // namespace

// Never destroyed: CUDA objects must not be released after the runtime shuts down at exit.
Context& ctx() {
  static Context* c = create_context();
  return *c;
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cudaGetErrorString(e);
    cudaGetLastError();
    return 0;
  }
  if (n == 0 && why) *why = "cudaGetDeviceCount found no device";
  return n;
}

std::string device_info() {
  Context& c = ctx();
  char mem[32];
  std::snprintf(mem, sizeof(mem), "%.1f GiB", double(c.prop.totalGlobalMem) / double(1ull << 30));
  return cat(c.prop.name, ", sm_", c.prop.major, c.prop.minor, ", ", c.prop.multiProcessorCount,
             " SMs, ", mem);
}

CacheStats cache_stats() {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  return c.cache.stats();
}

void set_cache_budget(uint64_t bytes) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  c.cache.set_budget(bytes ? bytes : default_budget());
}

void release() {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  c.cache.clear();
  for (int b = 0; b < 2; ++b) {
    c.dx[b].reset();
    c.dy[b].reset();
    c.hx[b].reset();
    c.hy[b].reset();
  }
  for (auto& t : c.tmp) t.reset();
}

// ---------------------------------------------------------------------------------------------
// Staging pipeline
// ---------------------------------------------------------------------------------------------
void stream_rows(Context& c, const float* x, int64_t rows, int64_t k, float* y, int64_t n,
                 int64_t max_rows, const ChunkOp& op) {
  if (rows <= 0) return;
  const int64_t row_bytes = std::max<int64_t>(k, y ? n : 0) * int64_t(sizeof(float));
  int64_t rpc = std::max<int64_t>(16, int64_t(staging_chunk_bytes()) / std::max<int64_t>(row_bytes, 1));
  // At least four chunks when there are enough rows, so copies overlap compute.
  if (rows >= 4 * 256 && rows / rpc < 4) rpc = std::max<int64_t>(256, (rows + 3) / 4);
  if (max_rows > 0) rpc = std::min(rpc, max_rows);
  rpc = std::min(rpc, rows);
  const int64_t nchunks = (rows + rpc - 1) / rpc;
  float *hx[2], *hy[2] = {nullptr, nullptr}, *dx[2], *dy[2] = {nullptr, nullptr};
  for (int b = 0; b < std::min<int64_t>(2, nchunks); ++b) {
    hx[b] = static_cast<float*>(c.hx[b].get(size_t(rpc * k) * sizeof(float)));
    dx[b] = c.dx[b].as<float>(size_t(rpc * k));
    if (y) {
      hy[b] = static_cast<float*>(c.hy[b].get(size_t(rpc * n) * sizeof(float)));
      dy[b] = c.dy[b].as<float>(size_t(rpc * n));
    }
  }
  int64_t pending[2] = {-1, -1};  // chunk whose output sits in slot b
  auto drain = [&](int b) {
    LLMC_CU(cudaEventSynchronize(c.ev_chunk[b]));
    if (y && pending[b] >= 0) {
      const int64_t r0 = pending[b] * rpc, nr = std::min(rpc, rows - r0);
      parallel_memcpy(y + r0 * n, hy[b], size_t(nr * n) * sizeof(float));
    }
    pending[b] = -1;
  };
  try {
    for (int64_t ci = 0; ci < nchunks; ++ci) {
      const int b = int(ci & 1);
      const int64_t r0 = ci * rpc, nr = std::min(rpc, rows - r0);
      if (ci >= 2) drain(b);
      parallel_memcpy(hx[b], x + r0 * k, size_t(nr * k) * sizeof(float));
      LLMC_CU(cudaMemcpyAsync(dx[b], hx[b], size_t(nr * k) * sizeof(float),
                              cudaMemcpyHostToDevice, c.s[b]));
      if (ci > 0) LLMC_CU(cudaStreamWaitEvent(c.s[b], c.ev_op[1 - b], 0));
      op(c.s[b], dx[b], y ? dy[b] : nullptr, r0, nr);
      LLMC_CU(cudaEventRecord(c.ev_op[b], c.s[b]));
      if (y) {
        LLMC_CU(cudaMemcpyAsync(hy[b], dy[b], size_t(nr * n) * sizeof(float),
                                cudaMemcpyDeviceToHost, c.s[b]));
      }
      LLMC_CU(cudaEventRecord(c.ev_chunk[b], c.s[b]));
      pending[b] = ci;
    }
    for (int64_t ci = std::max<int64_t>(0, nchunks - 2); ci < nchunks; ++ci) drain(int(ci & 1));
  } catch (...) {
    cudaStreamSynchronize(c.s[0]);
    cudaStreamSynchronize(c.s[1]);
    cudaGetLastError();
    throw;
  }
}

void sgemm_xwt(Context& c, cudaStream_t st, const float* dx, int64_t nr, int64_t k,
               const float* dw, int64_t n, float* dy, bool tf32) {
  const float one = 1.0f, zero = 0.0f;
  LLMC_CU(cublas().set_stream(c.blas, st));
  LLMC_CU(cublas().set_math_mode(c.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  // Column-major view: yᵀ[n, nr] = w[n, k] · xᵀ[k, nr]; row-major w is column-major [k, n].
  LLMC_CU(cublas().sgemm(c.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(nr), int(k), &one, dw, int(k),
                      dx, int(k), &zero, dy, int(n)));
}

// ---------------------------------------------------------------------------------------------
// Dense GEMM
// ---------------------------------------------------------------------------------------------
namespace {
void check_dims(int64_t rows, int64_t k, int64_t n, const char* what) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  if (rows < 0 || k <= 0 || n <= 0 || k > kMax || n > kMax)
    fail(what, ": unsupported shape rows=", rows, " k=", k, " n=", n);
}
}  // namespace

void gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              bool tf32) {
  check_dims(rows, k, n, "gemm_xwt (cuda)");
  if (rows == 0) return;
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const size_t wbytes = size_t(n * k) * sizeof(float);
  const uint64_t fp = fingerprint(w, wbytes);
  const float* dw = static_cast<const float*>(
      c.cache.get(fp, wbytes, /*tag=*/0, wbytes, c.s[0], [&](void* d, cudaStream_t st) {
        LLMC_CU(cudaMemcpyAsync(d, w, wbytes, cudaMemcpyHostToDevice, st));
      }));
  stream_rows(c, x, rows, k, y, n, 0, [&](cudaStream_t st, float* dx, float* dy, int64_t, int64_t nr) {
    sgemm_xwt(c, st, dx, nr, k, dw, n, dy, tf32);
  });
}

// ---------------------------------------------------------------------------------------------
// Xᵀ·X
// ---------------------------------------------------------------------------------------------
namespace {

// H (full, [cols, cols]) += alpha · mirror(S), S column-major with its upper triangle valid.
template <typename T>
__global__ void add_mirrored_kernel(const float* __restrict__ S, int64_t cols, T alpha,
                                    T* __restrict__ H) {
  const int64_t total = cols * cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols, cc = e % cols;
    const int64_t lo = r < cc ? r : cc, hi = r < cc ? cc : r;
    H[e] += alpha * T(S[lo + hi * cols]);
  }
}

// S[cols, cols] (upper, column-major) = Σ xᵀx over nr rows (beta = 0) or += (beta = 1).
void syrk_upper(Context& c, cudaStream_t st, const float* dx, int64_t nr, int64_t cols, float* S,
                float beta) {
  const float one = 1.0f;
  LLMC_CU(cublas().set_stream(c.blas, st));
  LLMC_CU(cublas().set_math_mode(c.blas, CUBLAS_DEFAULT_MATH));
  // Row-major x [nr, cols] is column-major xᵀ [cols, nr]: S = xᵀ · (xᵀ)ᵀ.
  LLMC_CU(cublas().ssyrk(c.blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, int(cols), int(nr), &one, dx,
                      int(cols), &beta, S, int(cols)));
}

}  // namespace

struct XtxState {
  int64_t cols = 0;
  double* H = nullptr;
  float* S = nullptr;
};

XtxState* xtx_create(int64_t cols) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  auto* s = new XtxState;
  s->cols = cols;
  const size_t n = size_t(cols) * size_t(cols);
  cudaError_t e = cudaMalloc(&s->H, n * sizeof(double));
  if (e == cudaSuccess) e = cudaMalloc(&s->S, n * sizeof(float));
  if (e == cudaSuccess) e = cudaMemset(s->H, 0, n * sizeof(double));
  if (e != cudaSuccess) {
    cudaGetLastError();
    xtx_destroy(s);
    fail("CUDA: cannot allocate a ", cols, "x", cols, " Hessian accumulator on the GPU (",
         cudaGetErrorString(e), ")");
  }
  return s;
}

void xtx_destroy(XtxState* s) noexcept {
  if (!s) return;
  if (s->H) cudaFree(s->H);
  if (s->S) cudaFree(s->S);
  delete s;
}

void xtx_add(XtxState* s, const float* x, int64_t rows, double alpha) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const int64_t cols = s->cols;
  stream_rows(c, x, rows, cols, nullptr, 0, 0,
              [&](cudaStream_t st, float* dx, float*, int64_t, int64_t nr) {
                for (int64_t r = 0; r < nr; r += kXtxChunkRows) {
                  const int64_t m = std::min(kXtxChunkRows, nr - r);
                  syrk_upper(c, st, dx + r * cols, m, cols, s->S, 0.0f);
                  add_mirrored_kernel<double>
                      <<<grid_for(cols * cols, 256), 256, 0, st>>>(s->S, cols, alpha, s->H);
                  LLMC_CU_LAUNCH("add_mirrored_kernel<double>");
                }
              });
}

void xtx_add_device(XtxState* s, const float* dx, int64_t rows, double alpha) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const int64_t cols = s->cols;
  for (int64_t r = 0; r < rows; r += kXtxChunkRows) {
    const int64_t m = std::min(kXtxChunkRows, rows - r);
    syrk_upper(c, c.s[0], dx + r * cols, m, cols, s->S, 0.0f);
    add_mirrored_kernel<double><<<grid_for(cols * cols, 256), 256, 0, c.s[0]>>>(s->S, cols, alpha, s->H);
    LLMC_CU_LAUNCH("add_mirrored_kernel<double>");
  }
}

void xtx_reset(XtxState* s) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaMemset(s->H, 0, size_t(s->cols) * size_t(s->cols) * sizeof(double)));
}

void xtx_read(const XtxState* s, double* H) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  LLMC_CU(cudaStreamSynchronize(c.s[0]));  // device-view adds run on s[0]
  LLMC_CU(cudaMemcpy(H, s->H, size_t(s->cols) * size_t(s->cols) * sizeof(double),
                     cudaMemcpyDeviceToHost));
}

void syrk_accumulate(const float* x, int64_t rows, int64_t cols, float* H, float alpha) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const size_t n = size_t(cols) * size_t(cols);
  float* S = c.tmp[0].as<float>(n);
  float* dH = c.tmp[1].as<float>(n);
  LLMC_CU(cudaMemcpyAsync(dH, H, n * sizeof(float), cudaMemcpyHostToDevice, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
  stream_rows(c, x, rows, cols, nullptr, 0, 0,
              [&](cudaStream_t st, float* dx, float*, int64_t r0, int64_t nr) {
                syrk_upper(c, st, dx, nr, cols, S, r0 == 0 ? 0.0f : 1.0f);
              });
  add_mirrored_kernel<float><<<grid_for(int64_t(n), 256), 256, 0, c.s[0]>>>(S, cols, alpha, dH);
  LLMC_CU_LAUNCH("add_mirrored_kernel<float>");
  LLMC_CU(cudaMemcpyAsync(H, dH, n * sizeof(float), cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
}

}  // namespace llmc::backend::cuda

// ---------------------------------------------------------------------------------------------
// Device-only timings (benchmarks)
// ---------------------------------------------------------------------------------------------
namespace llmc::backend::cuda {
namespace {

__global__ void fill_random_kernel(float* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = float(h & 0xffffff) / float(0x800000) - 1.0f;  // uniform in [-1, 1)
  }
}

struct EventTimer {
  cudaEvent_t a = nullptr, b = nullptr;
  EventTimer() {
    LLMC_CU(cudaEventCreate(&a));
    LLMC_CU(cudaEventCreate(&b));
  }
  ~EventTimer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  template <typename F>
  double per_call(cudaStream_t st, int reps, const F& f) {
    f();  // warm-up
    LLMC_CU(cudaStreamSynchronize(st));
    LLMC_CU(cudaEventRecord(a, st));
    for (int i = 0; i < reps; ++i) f();
    LLMC_CU(cudaEventRecord(b, st));
    LLMC_CU(cudaEventSynchronize(b));
    float ms = 0;
    LLMC_CU(cudaEventElapsedTime(&ms, a, b));
    return double(ms) * 1e-3 / reps;
  }
};

}  // namespace

double time_sgemm_device(int64_t rows, int64_t k, int64_t n, bool tf32, int reps) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  float* x = c.tmp[0].as<float>(size_t(rows * k));
  float* w = c.tmp[1].as<float>(size_t(n * k));
  float* y = c.tmp[2].as<float>(size_t(rows * n));
  fill_random_kernel<<<grid_for(rows * k, 256), 256, 0, c.s[0]>>>(x, rows * k, 1);
  fill_random_kernel<<<grid_for(n * k, 256), 256, 0, c.s[0]>>>(w, n * k, 2);
  LLMC_CU_LAUNCH("fill_random_kernel");
  EventTimer t;
  return t.per_call(c.s[0], reps, [&] { sgemm_xwt(c, c.s[0], x, rows, k, w, n, y, tf32); });
}

double time_syrk_device(int64_t rows, int64_t cols, int reps) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  float* x = c.tmp[0].as<float>(size_t(rows * cols));
  float* S = c.tmp[1].as<float>(size_t(cols * cols));
  fill_random_kernel<<<grid_for(rows * cols, 256), 256, 0, c.s[0]>>>(x, rows * cols, 3);
  LLMC_CU_LAUNCH("fill_random_kernel");
  EventTimer t;
  return t.per_call(c.s[0], reps, [&] { syrk_upper(c, c.s[0], x, rows, cols, S, 0.0f); });
}

double time_h2d_pinned(size_t bytes, int reps) {
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  void* h = c.hx[0].get(bytes);
  std::memset(h, 1, bytes);
  void* d = c.tmp[0].get(bytes);
  EventTimer t;
  return t.per_call(c.s[0], reps, [&] {
    LLMC_CU(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, c.s[0]));
  });
}

}  // namespace llmc::backend::cuda
