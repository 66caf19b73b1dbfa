// backend/cuda/cuda_context.cuh — the process-wide CUDA state shared by the .cu files of the
// CUDA backend: device, cuBLAS handle, two streams for double-buffered host<->device staging,
// grow-only scratch buffers and the resident-weight cache. Internal to src/backend/cuda.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "backend/cuda/cuda_backend.h"

namespace llmc::backend::cuda {

// cuBLAS is loaded on first use (dlopen of libcublas.so.<major>), not linked: linking it maps
// cublasLt and runs its initializers in every llmc process, about 200 MB of resident memory
// even for CPU-only runs. Throws llmc::Error naming the library when it cannot be loaded.
struct CublasApi {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetMathMode) set_math_mode;
  decltype(&cublasSgemm_v2) sgemm;
  decltype(&cublasSsyrk_v2) ssyrk;
  decltype(&cublasSgemmStridedBatched) sgemm_strided_batched;
  decltype(&cublasDgemm_v2) dgemm;
  decltype(&cublasGetStatusString) status_string;
};
const CublasApi& cublas();

[[noreturn]] void throw_cuda(const char* what, const char* msg);
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_cuda(what, cudaGetErrorString(e));
}
inline void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_cuda(what, cublas().status_string(s));
}
#define LLMC_CU(call) ::llmc::backend::cuda::check((call), #call)
// After a kernel launch: launch errors now, execution errors at the next synchronization.
#define LLMC_CU_LAUNCH(what) ::llmc::backend::cuda::check(cudaGetLastError(), what)

// Grow-only device buffer.
class DevBuf {
 public:
  DevBuf() = default;
  ~DevBuf() { reset(); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void* get(size_t bytes);
  template <typename T> T* as(size_t count) { return static_cast<T*>(get(count * sizeof(T))); }
  void reset() noexcept;

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Grow-only page-locked host buffer (DMA source/destination).
class PinnedBuf {
 public:
  PinnedBuf() = default;
  ~PinnedBuf() { reset(); }
  PinnedBuf(const PinnedBuf&) = delete;
  PinnedBuf& operator=(const PinnedBuf&) = delete;
  void* get(size_t bytes);
  void reset() noexcept;

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Device copies of host arrays (or of what is decoded from them), content-addressed: the key is
// a 64-bit fingerprint of the host contents plus the sizes, so a weight modified in place, or a
// temporary rebuilt with the same contents, maps to the right entry. LRU-bounded by bytes.
class WeightCache {
 public:
  // Fills a device buffer of `dev_bytes` (upload, decode, ...) on `st`.
  using FillFn = std::function<void(void* dev, cudaStream_t st)>;
  // Device buffer for contents (fp, host_bytes, tag); calls fill (and waits for it) when absent.
  // The pointer stays valid until the next get(), set_budget() or clear(). Entries larger than
  // the budget go to a one-off scratch buffer.
  void* get(uint64_t fp, size_t host_bytes, int tag, size_t dev_bytes, cudaStream_t st,
            const FillFn& fill);
  void clear() noexcept;
  void set_budget(uint64_t bytes);
  CacheStats stats() const;

 private:
  struct Entry {
    void* dev = nullptr;
    size_t bytes = 0;
    uint64_t tick = 0;
  };
  struct Key {
    uint64_t fp;
    size_t host_bytes, dev_bytes;
    int tag;
    bool operator<(const Key& o) const {
      if (fp != o.fp) return fp < o.fp;
      if (host_bytes != o.host_bytes) return host_bytes < o.host_bytes;
      if (dev_bytes != o.dev_bytes) return dev_bytes < o.dev_bytes;
      return tag < o.tag;
    }
  };
  void evict_until(uint64_t free_needed);
  std::map<Key, Entry> map_;
  DevBuf oversize_;
  uint64_t used_ = 0, budget_ = 0, tick_ = 0;
  CacheStats st_;
};

struct Context {
  std::mutex mu;
  int dev = 0;
  cudaDeviceProp prop{};
  cublasHandle_t blas = nullptr;
  cudaStream_t s[2] = {nullptr, nullptr};
  cudaEvent_t ev_chunk[2] = {nullptr, nullptr};  // staging slot b free again (its D2H done)
  cudaEvent_t ev_op[2] = {nullptr, nullptr};     // op of the chunk in slot b done
  DevBuf dx[2], dy[2], tmp[4];
  PinnedBuf hx[2], hy[2];
  WeightCache cache;
};

// The context, created on first use (throws llmc::Error when no device is usable). Callers
// hold ctx().mu for the whole operation.
Context& ctx();

// Chunk op: dx holds `nr` staged input rows (row-major, k columns) for rows [r0, r0 + nr); the
// op writes dy (nr × n) when the caller streams an output. Runs on stream st.
using ChunkOp = std::function<void(cudaStream_t st, float* dx, float* dy, int64_t r0, int64_t nr)>;
// Streams x [rows, k] through the device in chunks (double-buffered over two streams, pinned
// staging), calling op per chunk in order (op of chunk c starts after op of chunk c-1 ends),
// and copies dy back into y [rows, n] when y != nullptr. `max_rows` (> 0) caps the chunk.
// Returns with everything complete.
void stream_rows(Context& c, const float* x, int64_t rows, int64_t k, float* y, int64_t n,
                 int64_t max_rows, const ChunkOp& op);

// cuBLAS: y[nr, n] = x[nr, k] · w[n, k]ᵀ on stream st (device pointers).
void sgemm_xwt(Context& c, cudaStream_t st, const float* dx, int64_t nr, int64_t k,
               const float* dw, int64_t n, float* dy, bool tf32);

// Fake-quantizes nr device rows on st as llmc::quantize_activations does; `tensor_scale` is
// used by the per-tensor modes (quant_kernels.cu).
void launch_act_quant(ActQuant act, float tensor_scale, float* dx, int64_t nr, int64_t cols,
                      cudaStream_t st);
// Records the GPU memory in use for cuda_peak_used_bytes() (block_kernels.cu).
void sample_memory_use() noexcept;

inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return unsigned(b < max_blocks ? b : max_blocks);
}

}  // namespace llmc::backend::cuda
