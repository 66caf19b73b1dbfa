// backend/cuda/quant_kernels.cu — decoding of QuantizedWeight (int2..8 sym/asym with groups and
// g_idx, fp8 e4m3) and activation fake-quantization on the GPU, bit-exact with
// QuantizedWeight::dequantize and llmc::quantize_activations (quant/qweight.cpp); and the fused
// quantized linear (fake-quantize x, GEMM with the decoded weight kept resident, bias).
//
// Exactness: every value is produced by the same IEEE operations as the CPU reference (one
// multiply by the scale; x / scale by correctly rounded division; round-half-even via rintf),
// the fp8 decoder gives the values of core/dtype.cpp's table (tests cover all 256 bytes), and
// the fp8 encoder is the integer algorithm of core/dtype.cpp f32_to_fp8e4m3. Compiled without
// fast-math (IEEE division, denormals kept).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_context.cuh"
#include "core/dtype.h"
#include "core/error.h"

namespace llmc::backend::cuda {
namespace {

// float8_e4m3fn -> float, the exact values of core/dtype.cpp's table: normals are rebiased
// (exponent 7 -> 127), subnormals are m · 2^-9 (exact), 0x7f/0xff are NaN (quiet, with sign).
__device__ __forceinline__ float fp8e4m3_to_f32_dev(uint32_t v) {
  const uint32_t sign = (v & 0x80u) << 24, e = (v >> 3) & 0xfu, m = v & 7u;
  if (e == 0xfu && m == 7u) return __uint_as_float(sign | 0x7fc00000u);
  if (e == 0) return __uint_as_float(sign | __float_as_uint(float(m) * 0.001953125f));
  return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// ---- weight decoding ----
enum DeqMode : int { kDeqIntSym = 0, kDeqIntAsym = 1, kDeqFp8 = 2 };

struct DeqArgs {
  const int8_t* q8;
  const uint8_t* qu;
  const float* scales;
  const int32_t* zeros;
  const int32_t* g_idx;  // may be null
  int64_t out, in, group, row_stride;  // group 0 when g_idx is used; row_stride: scales per row
};

template <int MODE>
__device__ __forceinline__ float deq_code(const DeqArgs& a, int64_t e, int64_t si, float s) {
  if (MODE == kDeqFp8) return fp8e4m3_to_f32_dev(uint8_t(a.q8[e])) * s;
  if (MODE == kDeqIntSym) return float(a.q8[e]) * s;
  return float(int32_t(a.qu[e]) - a.zeros[si]) * s;
}

template <int MODE>
__device__ __forceinline__ float deq_one(const DeqArgs& a, int64_t o, int64_t i, int64_t e) {
  int64_t g = 0;
  if (a.g_idx) g = a.g_idx[i];
  else if (a.group > 0) g = i / a.group;
  const int64_t si = o * a.row_stride + g;
  return deq_code<MODE>(a, e, si, a.scales[si]);
}

// VEC: one thread per 4 consecutive elements of a row (in % 4 == 0): one 4-byte code load, one
// 16-byte store, and (without g_idx, group % 4 == 0) one scale/zero lookup for the four.
// Index arithmetic in 32 bits (the caller checks out·in < 2^31).
template <int MODE, bool VEC>
__global__ void dequant_kernel(DeqArgs a, float* __restrict__ w) {
  const uint32_t in = uint32_t(a.in), stride = gridDim.x * blockDim.x;
  if (VEC) {
    const uint32_t in4 = in >> 2, total = uint32_t(a.out) * in4;
    const bool shared_group = !a.g_idx && (a.group <= 0 || (a.group & 3) == 0);
    for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += stride) {
      const uint32_t o = t / in4, i = (t - o * in4) << 2, e = o * in + i;
      float4 v;
      if (shared_group) {
        const uint32_t g = a.group > 0 ? i / uint32_t(a.group) : 0u;
        const int64_t si = int64_t(o) * a.row_stride + g;
        const float s = a.scales[si];
        v.x = deq_code<MODE>(a, e, si, s);
        v.y = deq_code<MODE>(a, e + 1, si, s);
        v.z = deq_code<MODE>(a, e + 2, si, s);
        v.w = deq_code<MODE>(a, e + 3, si, s);
      } else {
        v.x = deq_one<MODE>(a, o, i, e);
        v.y = deq_one<MODE>(a, o, i + 1, e + 1);
        v.z = deq_one<MODE>(a, o, i + 2, e + 2);
        v.w = deq_one<MODE>(a, o, i + 3, e + 3);
      }
      reinterpret_cast<float4*>(w)[t] = v;
    }
  } else {
    const uint32_t total = uint32_t(a.out) * in;
    for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
      const uint32_t o = e / in, i = e - o * in;
      w[e] = deq_one<MODE>(a, o, i, e);
    }
  }
}

template <int MODE>
void launch_dequant_mode(const DeqArgs& a, float* w, cudaStream_t st) {
  const int64_t n = a.out * a.in;
  if ((a.in & 3) == 0) dequant_kernel<MODE, true><<<grid_for(n / 4, 256), 256, 0, st>>>(a, w);
  else dequant_kernel<MODE, false><<<grid_for(n, 256), 256, 0, st>>>(a, w);
  LLMC_CU_LAUNCH("dequant_kernel");
}

void launch_dequant(int mode, const DeqArgs& a, float* w, cudaStream_t st) {
  if (a.out * a.in >= (int64_t(1) << 31))
    fail("dequantize (cuda): weight of ", a.out, " x ", a.in, " elements is too large");
  if (mode == kDeqFp8) launch_dequant_mode<kDeqFp8>(a, w, st);
  else if (mode == kDeqIntSym) launch_dequant_mode<kDeqIntSym>(a, w, st);
  else launch_dequant_mode<kDeqIntAsym>(a, w, st);
}

int deq_mode(const QuantizedWeight& qw) {
  if (qw.kind == QKind::FP8) return kDeqFp8;
  return qw.symmetric ? kDeqIntSym : kDeqIntAsym;
}

// The size invariants QuantizedWeight::dequantize relies on, plus g_idx within range (the GPU
// must never read out of bounds). Code values are not range-checked: any byte decodes as on
// the CPU.
void check_shapes(const QuantizedWeight& qw, const char* what) {
  if (qw.out <= 0 || qw.in <= 0) fail(what, ": invalid shape [", qw.out, ", ", qw.in, "]");
  const size_t n = size_t(qw.out * qw.in);
  const bool use_u = qw.kind == QKind::INT && !qw.symmetric;
  if ((use_u ? qw.qu.size() : qw.q8.size()) != n)
    fail(what, ": expected ", n, " codes for [", qw.out, ", ", qw.in, "]");
  const size_t ns = qw.group == 0 ? 1 : size_t(qw.out * qw.n_groups());
  if (qw.scales.size() != ns) fail(what, ": expected ", ns, " scales, found ", qw.scales.size());
  if (use_u && qw.zeros.size() != ns)
    fail(what, ": expected ", ns, " zero points, found ", qw.zeros.size());
  if (!qw.g_idx.empty()) {
    if (qw.g_idx.size() != size_t(qw.in) || qw.group <= 0)
      fail(what, ": g_idx has ", qw.g_idx.size(), " entries for ", qw.in, " columns, group ",
           qw.group);
    const int64_t ng = qw.n_groups();
    for (int32_t gi : qw.g_idx)
      if (gi < 0 || gi >= ng) fail(what, ": g_idx value ", gi, " is outside [0, ", ng, ")");
  }
  if (!qw.bias.empty() && qw.bias.size() != size_t(qw.out))
    fail(what, ": bias has ", qw.bias.size(), " entries, expected ", qw.out);
}

// Uploads qw's arrays into the context's scratch buffers and decodes into dev_w on st.
void decode_on_device(Context& c, const QuantizedWeight& qw, float* dev_w, cudaStream_t st) {
  const size_t n = size_t(qw.out * qw.in);
  DeqArgs a{};
  a.out = qw.out;
  a.in = qw.in;
  a.group = qw.g_idx.empty() ? qw.group : 0;
  a.row_stride = qw.group == 0 ? 0 : qw.n_groups();
  const bool use_u = qw.kind == QKind::INT && !qw.symmetric;
  void* codes = c.tmp[0].get(n);
  LLMC_CU(cudaMemcpyAsync(codes, use_u ? static_cast<const void*>(qw.qu.data())
                                       : static_cast<const void*>(qw.q8.data()),
                          n, cudaMemcpyHostToDevice, st));
  a.q8 = static_cast<const int8_t*>(codes);
  a.qu = static_cast<const uint8_t*>(codes);
  float* sc = c.tmp[1].as<float>(qw.scales.size());
  LLMC_CU(cudaMemcpyAsync(sc, qw.scales.data(), qw.scales.size() * sizeof(float),
                          cudaMemcpyHostToDevice, st));
  a.scales = sc;
  if (use_u) {
    int32_t* z = c.tmp[2].as<int32_t>(qw.zeros.size());
    LLMC_CU(cudaMemcpyAsync(z, qw.zeros.data(), qw.zeros.size() * sizeof(int32_t),
                            cudaMemcpyHostToDevice, st));
    a.zeros = z;
  }
  if (!qw.g_idx.empty()) {
    int32_t* gi = c.tmp[3].as<int32_t>(qw.g_idx.size());
    LLMC_CU(cudaMemcpyAsync(gi, qw.g_idx.data(), qw.g_idx.size() * sizeof(int32_t),
                            cudaMemcpyHostToDevice, st));
    a.g_idx = gi;
  }
  launch_dequant(deq_mode(qw), a, dev_w, st);
}

// ---- activation fake-quantization ----
__device__ __forceinline__ uint8_t f32_to_fp8e4m3_dev(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7f);
  if (a >= 0x43e00000u) return uint8_t(sign | 0x7e);
  if (a < 0x3c800000u) {
    const float q = rintf(__fmul_rn(__uint_as_float(a), 512.0f));
    return uint8_t(sign | uint32_t(q));
  }
  uint32_t r = a - (120u << 23);
  r += 0x7ffffu + ((r >> 20) & 1u);
  return uint8_t(sign | (r >> 20));
}

__device__ __forceinline__ float fq_fp8(float x, float scale) {
  return __fmul_rn(fp8e4m3_to_f32_dev(f32_to_fp8e4m3_dev(__fdiv_rn(x, scale))), scale);
}

__device__ __forceinline__ float fq_int8(float x, float scale) {
  float q = rintf(__fdiv_rn(x, scale));
  if (isnan(q)) q = 0.0f;
  q = fminf(127.0f, fmaxf(-128.0f, q));
  return __fmul_rn(q, scale);
}

// The CPU's scale_for (quant/qweight.cpp): 1 for a zero or non-finite range.
__device__ __forceinline__ float scale_for(float amax, float qmax) {
  if (!(amax > 0.0f) || !isfinite(amax)) return 1.0f;
  const float s = __fdiv_rn(amax, qmax);
  return s > 0.0f ? s : 1.0f;
}

// fmaxf ignores NaN like the CPU's std::max(m, fabs(x)) with m first.
__device__ __forceinline__ float block_absmax(const float* row, int64_t cols) {
  __shared__ float red[32];
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, fabsf(row[i]));
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (threadIdx.x == 0) red[0] = m;
  }
  __syncthreads();
  const float r = red[0];
  __syncthreads();
  return r;
}

// mode: 0 fp8, 1 int8. per_row: scale from the row's abs-max; else `scale` (> 0) for all.
__global__ void act_quant_kernel(float* x, int64_t rows, int64_t cols, int mode, int per_row,
                                 float scale) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* row = x + r * cols;
    float s = scale;
    if (per_row) s = scale_for(block_absmax(row, cols), mode == 0 ? 448.0f : 127.0f);
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
      row[i] = mode == 0 ? fq_fp8(row[i], s) : fq_int8(row[i], s);
  }
}

float host_scale_for(float amax, float qmax) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 1.0f;
  const float s = amax / qmax;
  return s > 0.0f ? s : 1.0f;
}

void check_static(ActQuant act, float s) {
  if (!std::isfinite(s) || s <= 0.0f)
    fail("activation quantization ", act_quant_name(act),
         ": static input scale must be finite and > 0, got ", s);
}

// Per-tensor dynamic scale of the whole host matrix (abs-max is exact in any order; NaN is
// ignored as on the CPU).
float host_tensor_scale(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return host_scale_for(m, 448.0f);
}

}  // namespace

// Launches the fake-quantization of nr rows at dx on st. `tensor_scale` is used by the
// per-tensor modes (static, or dynamic computed beforehand).
void launch_act_quant(ActQuant act, float tensor_scale, float* dx, int64_t nr, int64_t cols,
                      cudaStream_t st) {
  int mode = 0, per_row = 0;
  switch (act) {
    case ActQuant::None: return;
    case ActQuant::FP8StaticTensor: case ActQuant::FP8DynamicTensor: break;
    case ActQuant::FP8DynamicToken: per_row = 1; break;
    case ActQuant::INT8DynamicToken: mode = 1; per_row = 1; break;
    case ActQuant::INT8StaticTensor: mode = 1; break;
    default: fail("unknown activation quantization kind ", int(act));
  }
  act_quant_kernel<<<grid_for(nr, 1, 1 << 20), 256, 0, st>>>(dx, nr, cols, mode, per_row,
                                                             tensor_scale);
  LLMC_CU_LAUNCH("act_quant_kernel");
}

namespace {

float resolve_tensor_scale(ActQuant act, float static_scale, const float* x, int64_t rows,
                           int64_t cols) {
  if (act == ActQuant::FP8StaticTensor || act == ActQuant::INT8StaticTensor) {
    check_static(act, static_scale);
    return static_scale;
  }
  if (act == ActQuant::FP8DynamicTensor) return host_tensor_scale(x, rows * cols);
  return 1.0f;
}

__global__ void add_bias_kernel(float* y, int64_t rows, int64_t n, const float* b) {
  const int64_t total = rows * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    y[e] = __fadd_rn(y[e], b[e % n]);
}

uint64_t qweight_fingerprint(const QuantizedWeight& qw) {
  const bool use_u = qw.kind == QKind::INT && !qw.symmetric;
  const int64_t hdr[] = {int64_t(qw.kind), qw.bits, qw.symmetric, qw.out, qw.in, qw.group};
  uint64_t h = fingerprint(hdr, sizeof(hdr));
  h = fingerprint(use_u ? static_cast<const void*>(qw.qu.data()) : qw.q8.data(),
                  use_u ? qw.qu.size() : qw.q8.size(), h);
  h = fingerprint(qw.scales.data(), qw.scales.size() * sizeof(float), h);
  h = fingerprint(qw.zeros.data(), qw.zeros.size() * sizeof(int32_t), h);
  return fingerprint(qw.g_idx.data(), qw.g_idx.size() * sizeof(int32_t), h);
}

}  // namespace

void dequantize(const QuantizedWeight& qw, float* out) {
  check_shapes(qw, "dequantize (cuda)");
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const size_t n = size_t(qw.out * qw.in);
  float* dw = c.dy[0].as<float>(n);
  decode_on_device(c, qw, dw, c.s[0]);
  LLMC_CU(cudaMemcpyAsync(out, dw, n * sizeof(float), cudaMemcpyDeviceToHost, c.s[0]));
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
}

void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0 || act == ActQuant::None) return;
  const float ts = resolve_tensor_scale(act, static_scale, x, rows, cols);
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  stream_rows(c, x, rows, cols, x, cols, 0,
              [&](cudaStream_t st, float* dx, float* dy, int64_t, int64_t nr) {
                launch_act_quant(act, ts, dx, nr, cols, st);
                LLMC_CU(cudaMemcpyAsync(dy, dx, size_t(nr * cols) * sizeof(float),
                                        cudaMemcpyDeviceToDevice, st));
              });
}

void qlinear_forward(const QuantizedWeight& qw, const float* x, int64_t rows, float* y, bool tf32) {
  if (rows <= 0) return;
  check_shapes(qw, "quantized linear (cuda)");
  const float ts = resolve_tensor_scale(qw.act, qw.input_scale, x, rows, qw.in);
  const uint64_t fp = qweight_fingerprint(qw);
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  const size_t wbytes = size_t(qw.out * qw.in) * sizeof(float);
  const float* dw = static_cast<const float*>(
      c.cache.get(fp, size_t(qw.out * qw.in), /*tag=*/1, wbytes, c.s[0],
                  [&](void* d, cudaStream_t st) { decode_on_device(c, qw, static_cast<float*>(d), st); }));
  float* db = nullptr;
  if (!qw.bias.empty()) {
    db = c.tmp[3].as<float>(qw.bias.size());
    LLMC_CU(cudaMemcpyAsync(db, qw.bias.data(), qw.bias.size() * sizeof(float),
                            cudaMemcpyHostToDevice, c.s[0]));
    LLMC_CU(cudaStreamSynchronize(c.s[0]));
  }
  const int64_t k = qw.in, n = qw.out;
  stream_rows(c, x, rows, k, y, n, 0, [&](cudaStream_t st, float* dx, float* dy, int64_t, int64_t nr) {
    launch_act_quant(qw.act, ts, dx, nr, k, st);
    sgemm_xwt(c, st, dx, nr, k, dw, n, dy, tf32);
    if (db) {
      add_bias_kernel<<<grid_for(nr * n, 256), 256, 0, st>>>(dy, nr, n, db);
      LLMC_CU_LAUNCH("add_bias_kernel");
    }
  });
}

double time_dequant_device(const QuantizedWeight& qw, int reps) {
  check_shapes(qw, "dequantize (cuda)");
  Context& c = ctx();
  std::lock_guard<std::mutex> g(c.mu);
  float* dw = c.dy[0].as<float>(size_t(qw.out * qw.in));
  decode_on_device(c, qw, dw, c.s[0]);  // uploads the codes once; the kernel is re-run below
  LLMC_CU(cudaStreamSynchronize(c.s[0]));
  const bool use_u = qw.kind == QKind::INT && !qw.symmetric;
  DeqArgs a{};
  a.out = qw.out;
  a.in = qw.in;
  a.group = qw.g_idx.empty() ? qw.group : 0;
  a.row_stride = qw.group == 0 ? 0 : qw.n_groups();
  a.q8 = static_cast<const int8_t*>(c.tmp[0].get(0));
  a.qu = static_cast<const uint8_t*>(c.tmp[0].get(0));
  a.scales = static_cast<const float*>(c.tmp[1].get(0));
  a.zeros = use_u ? static_cast<const int32_t*>(c.tmp[2].get(0)) : nullptr;
  a.g_idx = qw.g_idx.empty() ? nullptr : static_cast<const int32_t*>(c.tmp[3].get(0));
  cudaEvent_t e0, e1;
  LLMC_CU(cudaEventCreate(&e0));
  LLMC_CU(cudaEventCreate(&e1));
  LLMC_CU(cudaEventRecord(e0, c.s[0]));
  for (int i = 0; i < reps; ++i) launch_dequant(deq_mode(qw), a, dw, c.s[0]);
  LLMC_CU(cudaEventRecord(e1, c.s[0]));
  LLMC_CU(cudaEventSynchronize(e1));
  float ms = 0;
  LLMC_CU(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return double(ms) * 1e-3 / reps;
}

}  // namespace llmc::backend::cuda
