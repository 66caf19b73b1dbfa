// backend/backend.cpp — device selection, dispatch, and the CPU paths of backend.h.
#include "backend/backend.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/threads.h"

namespace llmc::backend {

// ---------------------------------------------------------------------------------------------
// Device selection
// ---------------------------------------------------------------------------------------------
namespace {

std::atomic<int> g_device{-1};  // -1: not chosen yet; else int(Device)
std::atomic<int> g_tf32{-1};    // -1: not read from the environment yet
std::mutex g_init_mu;

struct CudaProbe {
  bool available = false;
  std::string info;  // device description, or why unavailable
};

const CudaProbe& cuda_probe() {
  static const CudaProbe p = [] {
    CudaProbe r;
#ifdef LLMC_HAVE_CUDA
    std::string why;
    int n = 0;
    try {
      n = cuda::device_count(&why);
    } catch (const Error& e) {
      why = e.what();
    }
    r.available = n > 0;
    if (r.available) {
      try {
        r.info = cuda::device_info();
      } catch (const Error& e) {
        r.available = false;
        r.info = cat("CUDA device present but unusable: ", e.what());
      }
    } else {
      r.info = cat("no usable CUDA device (", why, ")");
    }
#else
    r.info = "llmc was built without the CUDA backend (configure with -DLLMC_CUDA=ON on a "
             "machine with the CUDA toolkit)";
#endif
    return r;
  }();
  return p;
}

}  // namespace

const char* device_name(Device d) { return d == Device::CUDA ? "cuda" : "cpu"; }

Device parse_device(std::string_view s) {
  if (s == "cpu") return Device::CPU;
  if (s == "cuda" || s == "gpu") return Device::CUDA;
  if (s == "auto") return cuda_available() ? Device::CUDA : Device::CPU;
  fail("unknown device '", s, "' (expected cpu, cuda or auto)");
}

bool cuda_compiled() {
#ifdef LLMC_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_available() { return cuda_probe().available; }
std::string cuda_device_info() { return cuda_probe().info; }

void set_device(Device d) {
  if (d == Device::CUDA && !cuda_available()) {
    fail("device cuda requested but CUDA is unavailable: ", cuda_device_info());
  }
  std::lock_guard<std::mutex> g(g_init_mu);
  g_device.store(int(d));
}

void init_device_from_env() {
  const char* e = std::getenv("LLMC_DEVICE");
  Device d = Device::CPU;
  if (e && *e) {
    try {
      d = parse_device(e);
    } catch (const Error& err) {
      fail("LLMC_DEVICE: ", err.what());
    }
    if (d == Device::CUDA && !cuda_available()) {
      fail("LLMC_DEVICE=", e, " but CUDA is unavailable: ", cuda_device_info());
    }
  }
  std::lock_guard<std::mutex> g(g_init_mu);
  g_device.store(int(d));
}

Device device() {
  int d = g_device.load(std::memory_order_relaxed);
  if (d < 0) {
    init_device_from_env();
    d = g_device.load();
  }
  return Device(d);
}

void set_cuda_tf32(bool on) { g_tf32.store(on ? 1 : 0); }
bool cuda_tf32() {
  int t = g_tf32.load(std::memory_order_relaxed);
  if (t < 0) {
    const char* e = std::getenv("LLMC_CUDA_TF32");
    t = (e && (std::strcmp(e, "0") == 0 || std::strcmp(e, "off") == 0)) ? 0 : 1;
    g_tf32.store(t);
  }
  return t == 1;
}

// ---------------------------------------------------------------------------------------------
// Host helpers shared with the CUDA implementation
// ---------------------------------------------------------------------------------------------
namespace {
constexpr uint64_t P1 = 11400714785074694791ULL, P2 = 14029467366897019727ULL,
                   P3 = 1609587929392839161ULL, P4 = 9650029242287828579ULL,
                   P5 = 2870177450012600261ULL;
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t round64(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  return h ^ (h >> 32);
}

uint64_t hash_chunk(const uint8_t* p, size_t n, uint64_t seed) {
  uint64_t h;
  size_t i = 0;
  if (n >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    for (; i + 32 <= n; i += 32) {
      uint64_t w[4];
      std::memcpy(w, p + i, 32);
      v1 = round64(v1, w[0]);
      v2 = round64(v2, w[1]);
      v3 = round64(v3, w[2]);
      v4 = round64(v4, w[3]);
    }
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
  } else {
    h = seed + P5;
  }
  h += n;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h ^= round64(0, w);
    h = rotl(h, 27) * P1 + P4;
  }
  for (; i < n; ++i) {
    h ^= uint64_t(p[i]) * P5;
    h = rotl(h, 11) * P1;
  }
  return avalanche(h);
}
constexpr size_t kHashChunk = size_t(1) << 20;
}  // namespace

uint64_t fingerprint(const void* p, size_t bytes, uint64_t seed) {
  const auto* b = static_cast<const uint8_t*>(p);
  const size_t nchunks = (bytes + kHashChunk - 1) / kHashChunk;
  if (nchunks <= 1) return hash_chunk(b, bytes, seed);
  std::vector<uint64_t> hs(nchunks);
  parallel_for(0, nchunks, 1, [&](size_t lo, size_t hi) {
    for (size_t c = lo; c < hi; ++c) {
      const size_t off = c * kHashChunk;
      hs[c] = hash_chunk(b + off, std::min(kHashChunk, bytes - off), seed + c);
    }
  });
  uint64_t h = seed ^ (uint64_t(bytes) * P5);
  for (uint64_t v : hs) h = avalanche(round64(h, v));
  return h;
}

void parallel_memcpy(void* dst, const void* src, size_t bytes) {
  constexpr size_t kGrain = size_t(256) << 10;
  if (bytes <= 2 * kGrain) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const size_t nchunks = (bytes + kGrain - 1) / kGrain;
  parallel_for(0, nchunks, 1, [&](size_t lo, size_t hi) {
    const size_t b = lo * kGrain, e = std::min(bytes, hi * kGrain);
    std::memcpy(static_cast<uint8_t*>(dst) + b, static_cast<const uint8_t*>(src) + b, e - b);
  });
}

size_t staging_chunk_bytes() {
  static const size_t v = [] {
    const char* e = std::getenv("LLMC_CUDA_CHUNK_MB");
    const long mb = e ? std::atol(e) : 0;
    return size_t(mb > 0 ? mb : 8) << 20;
  }();
  return v;
}

// ---------------------------------------------------------------------------------------------
// Dense GEMM and the weight cache
// ---------------------------------------------------------------------------------------------
namespace {
bool worth_gpu(int64_t rows, int64_t k, int64_t n) {
  return rows >= 16 && 2.0 * double(rows) * double(k) * double(n) >= double(1 << 24);
}
}  // namespace

bool try_gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
                  bool allow_tf32) {
  if (device() != Device::CUDA || !worth_gpu(rows, k, n)) return false;
  cuda_gemm_xwt(x, rows, k, w, n, y, allow_tf32);
  return true;
}

void cuda_gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
                   bool allow_tf32) {
  if (device() != Device::CUDA) fail("cuda_gemm_xwt: the current device is ", device_name(device()));
#ifdef LLMC_HAVE_CUDA
  cuda::gemm_xwt(x, rows, k, w, n, y, allow_tf32 && cuda_tf32());
#endif
}

CacheStats weight_cache_stats() {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) return cuda::cache_stats();
#endif
  return {};
}

void set_weight_cache_budget(uint64_t bytes) {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) cuda::set_cache_budget(bytes);
#endif
}

void release_device_memory() {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) cuda::release();
#endif
}

// ---------------------------------------------------------------------------------------------
// Xᵀ·X
// ---------------------------------------------------------------------------------------------
namespace {
// S (upper triangle, row-major) = xᵀx of `rows` rows.
void cpu_syrk_upper(const float* x, int64_t rows, int64_t cols, float* S, float beta) {
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(cols), int(rows), 1.0f, x, int(cols),
              beta, S, int(cols));
}
// H (full, row-major) += alpha · mirror(S upper).
template <typename T>
void add_mirrored(const float* S, int64_t cols, T alpha, T* H) {
  parallel_for(0, size_t(cols), 16, [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; ++r) {
      T* hr = H + r * cols;
      for (int64_t c = 0; c < int64_t(r); ++c) hr[c] += alpha * T(S[c * cols + r]);
      const float* sr = S + r * cols;
      for (int64_t c = r; c < cols; ++c) hr[c] += alpha * T(sr[c]);
    }
  });
}
void check_xtx_args(const float* x, int64_t rows, int64_t cols) {
  if (cols <= 0 || rows < 0) fail("accumulate_xtx: bad shape [", rows, ", ", cols, "]");
  if (cols > (int64_t(1) << 20)) fail("accumulate_xtx: ", cols, " columns is too many");
  if (rows > 0 && !x) fail("accumulate_xtx: null input");
}
}  // namespace

void accumulate_xtx(const float* x, int64_t rows, int64_t cols, float* H, float alpha) {
  check_xtx_args(x, rows, cols);
  if (rows == 0) return;
#ifdef LLMC_HAVE_CUDA
  if (device() == Device::CUDA) return cuda::syrk_accumulate(x, rows, cols, H, alpha);
#endif
  std::vector<float> S(size_t(cols) * cols);
  constexpr int64_t kMaxRows = int64_t(1) << 20;  // BLAS takes int dimensions
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
    const int64_t nr = std::min(kMaxRows, rows - r0);
    cpu_syrk_upper(x + r0 * cols, nr, cols, S.data(), r0 == 0 ? 0.0f : 1.0f);
  }
  add_mirrored<float>(S.data(), cols, alpha, H);
}

struct XtxAccumulator::Impl {
  std::vector<double> H;          // CPU
  std::vector<float> S;           // CPU scratch
  cuda::XtxState* gpu = nullptr;  // CUDA
};

XtxAccumulator::XtxAccumulator(int64_t cols)
    : cols_(cols), where_(device()), impl_(std::make_unique<Impl>()) {
  check_xtx_args(nullptr, 0, cols);
#ifdef LLMC_HAVE_CUDA
  if (where_ == Device::CUDA) {
    impl_->gpu = cuda::xtx_create(cols);
    return;
  }
#endif
  impl_->H.assign(size_t(cols) * cols, 0.0);
}

XtxAccumulator::~XtxAccumulator() {
#ifdef LLMC_HAVE_CUDA
  if (impl_ && impl_->gpu) cuda::xtx_destroy(impl_->gpu);
#endif
}

void XtxAccumulator::add(const float* x, int64_t rows, double alpha) {
  check_xtx_args(x, rows, cols_);
  if (rows == 0) return;
  rows_seen_ += rows;
#ifdef LLMC_HAVE_CUDA
  if (impl_->gpu) return cuda::xtx_add(impl_->gpu, x, rows, alpha);
#endif
  if (impl_->S.empty()) impl_->S.resize(size_t(cols_) * cols_);
  for (int64_t r0 = 0; r0 < rows; r0 += kXtxChunkRows) {
    const int64_t nr = std::min(kXtxChunkRows, rows - r0);
    cpu_syrk_upper(x + r0 * cols_, nr, cols_, impl_->S.data(), 0.0f);
    add_mirrored<double>(impl_->S.data(), cols_, alpha, impl_->H.data());
  }
}

void XtxAccumulator::add(const MatView& x, double alpha) {
  if (x.cols != cols_) fail("XtxAccumulator: input has ", x.cols, " columns, expected ", cols_);
  if (!x.on_device()) return add(x.data, x.rows, alpha);
  check_xtx_args(x.data, x.rows, cols_);
  if (x.rows == 0) return;
#ifdef LLMC_HAVE_CUDA
  if (impl_->gpu) {
    rows_seen_ += x.rows;
    return cuda::xtx_add_device(impl_->gpu, x.data, x.rows, alpha);
  }
#endif
  std::vector<float> buf;
  add(host_rows(x, &buf), x.rows, alpha);
}

void XtxAccumulator::reset() {
  rows_seen_ = 0;
#ifdef LLMC_HAVE_CUDA
  if (impl_->gpu) return cuda::xtx_reset(impl_->gpu);
#endif
  std::fill(impl_->H.begin(), impl_->H.end(), 0.0);
}

void XtxAccumulator::read(double* H, double scale) const {
  const size_t n = size_t(cols_) * cols_;
#ifdef LLMC_HAVE_CUDA
  if (impl_->gpu) {
    cuda::xtx_read(impl_->gpu, H);
    if (scale != 1.0) for (size_t i = 0; i < n; ++i) H[i] *= scale;
    return;
  }
#endif
  for (size_t i = 0; i < n; ++i) H[i] = impl_->H[i] * scale;
}

void XtxAccumulator::read(float* H, double scale) const {
  std::vector<double> tmp(size_t(cols_) * cols_);
  read(tmp.data(), scale);
  for (size_t i = 0; i < tmp.size(); ++i) H[i] = float(tmp[i]);
}

// ---------------------------------------------------------------------------------------------
// Quantized weights
// ---------------------------------------------------------------------------------------------
bool cuda_gptq_solve(GptqSolveJob& job) {
  if (device() != Device::CUDA)
    fail("cuda_gptq_solve: the current device is ", device_name(device()));
  if (job.out <= 0 || job.n <= 0 || !job.w || !job.h || !job.codes || !job.scales)
    fail("cuda_gptq_solve: bad job [", job.out, ", ", job.n, "]");
  if (job.block <= 0 || (job.group > 0 && job.block % job.group != 0))
    fail("cuda_gptq_solve: block ", job.block, " is not a positive multiple of group ", job.group);
  if (!job.params_given && job.group <= 0)
    fail("cuda_gptq_solve: parameters must be given unless groups are formed in the solver");
#ifdef LLMC_HAVE_CUDA
  return cuda::gptq_solve(job);
#else
  fail("cuda_gptq_solve: llmc was built without the CUDA backend");
#endif
}

bool cuda_gptq_layer(GptqLayerJob& job) {
  const GptqSolveJob& s = job.solve;
  if (device() != Device::CUDA)
    fail("cuda_gptq_layer: the current device is ", device_name(device()));
  if (s.out <= 0 || s.n <= 0 || !job.w || !job.h || !job.perm || !job.dead || !job.code_bytes ||
      !s.scales || (s.fp8 && !job.fixed_scales))
    fail("cuda_gptq_layer: bad job [", s.out, ", ", s.n, "]");
  if (s.block <= 0 || (s.group > 0 && s.block % s.group != 0))
    fail("cuda_gptq_layer: block ", s.block, " is not a positive multiple of group ", s.group);
  if (job.w_ref && (!s.fp8 || !job.ref_scales)) fail("cuda_gptq_layer: bad report options");
#ifdef LLMC_HAVE_CUDA
  return cuda::gptq_layer(job);
#else
  fail("cuda_gptq_layer: llmc was built without the CUDA backend");
#endif
}

std::vector<float> dequantize(const QuantizedWeight& qw) {
#ifdef LLMC_HAVE_CUDA
  if (device() == Device::CUDA) {
    std::vector<float> out(size_t(qw.out) * size_t(qw.in));
    cuda::dequantize(qw, out.data());
    return out;
  }
#endif
  return qw.dequantize();
}

void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols) {
#ifdef LLMC_HAVE_CUDA
  if (device() == Device::CUDA && act != ActQuant::None) {
    return cuda::quantize_activations(act, static_scale, x, rows, cols);
  }
#endif
  llmc::quantize_activations(act, static_scale, x, rows, cols);
}

bool try_qlinear_forward(const QuantizedWeight& qw, const float* x, int64_t rows, float* y) {
  if (device() != Device::CUDA || !worth_gpu(rows, qw.in, qw.out)) return false;
#ifdef LLMC_HAVE_CUDA
  cuda::qlinear_forward(qw, x, rows, y, cuda_tf32());
  return true;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------------
// Device arrays and block primitives
// ---------------------------------------------------------------------------------------------
namespace {
[[noreturn]] void no_cuda(const char* what) {
  fail(what, ": needs the CUDA device (", cuda_device_info(), ")");
}
void need_cuda(const char* what) {
  if (device() != Device::CUDA) no_cuda(what);
}
}  // namespace

const float* host_rows(const MatView& v, std::vector<float>* buf) {
  if (!v.on_device()) return v.data;
  buf->resize(size_t(v.rows * v.cols));
#ifdef LLMC_HAVE_CUDA
  cuda::dev_download(buf->data(), v.data, v.rows * v.cols);
  return buf->data();
#else
  no_cuda("host_rows");
#endif
}

DeviceArray::DeviceArray(int64_t n) {
  if (!cuda_available()) no_cuda("DeviceArray");
#ifdef LLMC_HAVE_CUDA
  p_ = cuda::dev_alloc(n);
  n_ = n;
#endif
}

DeviceArray::~DeviceArray() {
#ifdef LLMC_HAVE_CUDA
  cuda::dev_free(p_);
#endif
}

DeviceArray& DeviceArray::operator=(DeviceArray&& o) noexcept {
  if (this != &o) {
#ifdef LLMC_HAVE_CUDA
    cuda::dev_free(p_);
#endif
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}

void DeviceArray::reserve(int64_t n) {
  if (n <= n_ && p_) return;
  *this = DeviceArray();
  *this = DeviceArray(n);
}

void DeviceArray::upload(const float* host, int64_t n, int64_t offset) {
  LLMC_CHECK(offset >= 0 && offset + n <= n_, "DeviceArray::upload out of range");
#ifdef LLMC_HAVE_CUDA
  if (n > 0) cuda::dev_upload(p_ + offset, host, n);
#endif
}

void DeviceArray::download(float* host, int64_t n, int64_t offset) const {
  LLMC_CHECK(offset >= 0 && offset + n <= n_, "DeviceArray::download out of range");
#ifdef LLMC_HAVE_CUDA
  if (n > 0) cuda::dev_download(host, p_ + offset, n);
#endif
}

uint64_t cuda_free_bytes() {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) return cuda::free_bytes();
#endif
  return 0;
}

uint64_t cuda_peak_used_bytes() {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) return cuda::peak_used_bytes();
#endif
  return 0;
}

void note_gpu_memory() {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) cuda::note_memory();
#endif
}

uint64_t content_fingerprint(const void* p, size_t bytes) { return fingerprint(p, bytes); }

namespace dev {
#ifdef LLMC_HAVE_CUDA
#define LLMC_DEV(name, call) \
  need_cuda(name);           \
  call
#else
#define LLMC_DEV(name, call) no_cuda(name)
#endif

void copy(float* dst, const float* src, int64_t n) { LLMC_DEV("dev::copy", cuda::dev_copy(dst, src, n)); }
void upload_async(float* dst, const float* host, int64_t n) {
  LLMC_DEV("dev::upload", cuda::dev_upload(dst, host, n));
}
void gemm_xwt(const float* x, int64_t rows, int64_t k, const float* w, int64_t n, float* y,
              const float* bias, bool allow_tf32) {
  LLMC_DEV("dev::gemm_xwt", cuda::blk_gemm(x, rows, k, w, n, y, bias, allow_tf32 && cuda_tf32()));
}
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, double eps, float* y) {
  LLMC_DEV("dev::rms_norm", cuda::blk_rms_norm(x, w, rows, dim, eps, y));
}
void rope(float* x, int64_t rows, int64_t stride, int heads, int hd, int seq, const float* cos,
          const float* sin) {
  LLMC_DEV("dev::rope", cuda::blk_rope(x, rows, stride, heads, hd, seq, cos, sin));
}
void causal_attention(const float* q, const float* k, const float* v, int batch, int seq,
                      int heads, int kv_heads, int hd, float* out) {
  LLMC_DEV("dev::causal_attention",
           cuda::blk_attention(q, k, v, batch, seq, heads, kv_heads, hd, out, cuda_tf32()));
}
void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  LLMC_DEV("dev::silu_mul", cuda::blk_silu_mul(gate, up, out, n));
}
void add_inplace(float* y, const float* x, int64_t n) { LLMC_DEV("dev::add_inplace", cuda::blk_add(y, x, n)); }
void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols) {
  LLMC_DEV("dev::quantize_activations", cuda::blk_act_quant(act, static_scale, x, rows, cols));
}
float abs_max(const float* x, int64_t n) {
#ifdef LLMC_HAVE_CUDA
  need_cuda("dev::abs_max");
  return cuda::blk_abs_max(x, n);
#else
  (void)x, (void)n;
  no_cuda("dev::abs_max");
#endif
}
uint64_t fingerprint(const float* x, int64_t n) {
#ifdef LLMC_HAVE_CUDA
  need_cuda("dev::fingerprint");
  return cuda::blk_fingerprint(x, n);
#else
  (void)x, (void)n;
  no_cuda("dev::fingerprint");
#endif
}
void col_abs_sum(const float* x, int64_t rows, int64_t cols, double* sums) {
  LLMC_DEV("dev::col_abs_sum", cuda::blk_col_abs_sum(x, rows, cols, sums));
}
void gather_rows(const float* x, int64_t rows, int64_t cols, int64_t first, int64_t stride,
                 std::vector<float>* out) {
  LLMC_CHECK(stride >= 1 && first >= 0, "gather_rows: bad stride");
  const int64_t count = first < rows ? (rows - first + stride - 1) / stride : 0;
  const size_t at = out->size();
  out->resize(at + size_t(count * cols));
  LLMC_DEV("dev::gather_rows",
           cuda::blk_gather_rows(x, rows, cols, first, stride, out->data() + at, count));
}
void sync() {
#ifdef LLMC_HAVE_CUDA
  if (cuda_available()) cuda::blk_sync();
#endif
}
void gemm_batched(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                  int64_t sA, const float* B, int64_t ldb, int64_t sB, float* C, int64_t ldc,
                  int64_t sC, int batch) {
  LLMC_DEV("dev::gemm_batched", cuda::srch_gemm_batched(b_transposed, m, n, k, A, lda, sA, B, ldb,
                                                        sB, C, ldc, sC, batch));
}
void seg_sums(SegOp op, const float* a, int64_t sa, const float* b, int64_t sb, int64_t len,
              int64_t nseg, double* out) {
  LLMC_CHECK(op == SegOp::SqDiff || b != nullptr, "seg_sums: Dot needs b");
  LLMC_DEV("dev::seg_sums",
           cuda::srch_seg_sums(op == SegOp::Dot ? 0 : 1, a, sa, b, sb, len, nseg, out));
}
void fake_quant_scaled(const float* w, int64_t out, int64_t in, const float* s, int64_t group,
                       const GridParams& g, bool minus_w, float* y) {
  LLMC_CHECK(!g.fp8 && g.bits >= 2 && g.bits <= 8 && (group > 0 || group == -1),
             "fake_quant_scaled: INT grids of 2..8 bits, group > 0 or -1");
  LLMC_DEV("dev::fake_quant_scaled", cuda::srch_fake_quant(w, out, in, s, group, g, minus_w, y));
}
void shrink_residuals(const float* w, int64_t out, int64_t in, int64_t group, const GridParams& g,
                      int steps, double max_shrink, int k0, int kc, float* D) {
  LLMC_CHECK(!g.fp8 && g.bits >= 2 && g.bits <= 8 && (group > 0 || group == -1) && steps > 0,
             "shrink_residuals: INT grids of 2..8 bits, group > 0 or -1, steps > 0");
  LLMC_DEV("dev::shrink_residuals",
           cuda::srch_shrink_residuals(w, out, in, group, g, steps, max_shrink, k0, kc, D));
}
#undef LLMC_DEV
}  // namespace dev

bool cuda_wiener_solve(const double* H, const double* d, const float* w, int64_t out, int64_t n,
                       float* x) {
  if (device() != Device::CUDA)
    fail("cuda_wiener_solve: the current device is ", device_name(device()));
  LLMC_CHECK(out > 0 && n > 0, "cuda_wiener_solve: bad shape");
#ifdef LLMC_HAVE_CUDA
  return cuda::srch_wiener_solve(H, d, w, out, n, x);
#else
  (void)H, (void)d, (void)w, (void)x;
  fail("cuda_wiener_solve: llmc was built without the CUDA backend");
#endif
}

}  // namespace llmc::backend
