// backend/cuda/quant_kernels.cu — decoding of QuantizedWeight (int2..8 sym/asym with groups and
// g_idx, fp8 e4m3) and activation fake-quantization on the GPU, bit-exact with
// QuantizedWeight::dequantize and llmc::quantize_activations (quant/qweight.cpp); and the fused
// quantized linear (fake-quantize x, GEMM with the decoded weight kept resident, bias).
//
// Exactness: every value is produced by the same IEEE operations as the CPU reference (one
// multiply by the scale; x / scale by correctly rounded division; round-half-even via rintf),
// the fp8 decode table is copied from core/dtype.cpp, and the fp8 encoder below is the integer
// algorithm of core/dtype.cpp f32_to_fp8e4m3. The file is compiled without fast-math.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cuda/cuda_context.cuh"
#include "core/dtype.h"
#include "core/error.h"

namespace llmc::backend::cuda {
namespace {

__constant__ float c_fp8_e4m3[256];

void ensure_fp8_table() {
  static bool done = false;  // under ctx().mu
  if (done) return;
  float t[256];
  for (int i = 0; i < 256; ++i) t[i] = fp8e4m3_to_f32(uint8_t(i));
  LLMC_CU(cudaMemcpyToSymbol(c_fp8_e4m3, t, sizeof(t)));
  done = true;
}

// ---- weight decoding ----
enum DeqMode : int { kDeqIntSym = 0, kDeqIntAsym = 1, kDeqFp8 = 2 };

struct DeqArgs {
  const int8_t* q8;
  const uint8_t* qu;
  const float* scales;
  const int32_t* zeros;
  const int32_t* g_idx;  // may be null
  int64_t out, in, group, row_stride;  // row_stride: scales per row (0 for per-tensor)
  int mode;
};

__device__ __forceinline__ float deq_one(const DeqArgs& a, int64_t o, int64_t i, int64_t e) {
  int64_t g = 0;
  if (a.g_idx) g = a.g_idx[i];
  else if (a.group > 0) g = i / a.group;
  const int64_t si = o * a.row_stride + g;
  const float s = a.scales[si];
  if (a.mode == kDeqFp8) return c_fp8_e4m3[uint8_t(a.q8[e])] * s;
  if (a.mode == kDeqIntSym) return float(a.q8[e]) * s;
  return float(int32_t(a.qu[e]) - a.zeros[si]) * s;
}

// One thread per 4 consecutive elements of a row (in % 4 == 0) or per element otherwise.
__global__ void dequant_kernel(DeqArgs a, float* __restrict__ w) {
  const int64_t n = a.out * a.in;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if ((a.in & 3) == 0) {
    const int64_t in4 = a.in >> 2;
    for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < a.out * in4; t += stride) {
      const int64_t o = t / in4, i = (t - o * in4) << 2, e = o * a.in + i;
      float4 v;
      v.x = deq_one(a, o, i, e);
      v.y = deq_one(a, o, i + 1, e + 1);
      v.z = deq_one(a, o, i + 2, e + 2);
      v.w = deq_one(a, o, i + 3, e + 3);
      reinterpret_cast<float4*>(w)[t] = v;
    }
  } else {
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += stride) {
      const int64_t o = e / a.in, i = e - o * a.in;
      w[e] = deq_one(a, o, i, e);
    }
  }
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
  ensure_fp8_table();
  const size_t n = size_t(qw.out * qw.in);
  DeqArgs a{};
  a.out = qw.out;
  a.in = qw.in;
  a.group = qw.g_idx.empty() ? qw.group : 0;
  a.row_stride = qw.group == 0 ? 0 : qw.n_groups();
  const bool use_u = qw.kind == QKind::INT && !qw.symmetric;
  a.mode = qw.kind == QKind::FP8 ? kDeqFp8 : (use_u ? kDeqIntAsym : kDeqIntSym);
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
  const int64_t items = (qw.in & 3) == 0 ? int64_t(n / 4) : int64_t(n);
  dequant_kernel<<<grid_for(items, 256), 256, 0, st>>>(a, dev_w);
  LLMC_CU_LAUNCH("dequant_kernel");
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
  return __fmul_rn(c_fp8_e4m3[f32_to_fp8e4m3_dev(__fdiv_rn(x, scale))], scale);
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
  ensure_fp8_table();
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
  ensure_fp8_table();
  const bool use_u = qw.kind == QKind::INT && !qw.symmetric;
  const void* key = use_u ? static_cast<const void*>(qw.qu.data()) : qw.q8.data();
  const size_t wbytes = size_t(qw.out * qw.in) * sizeof(float);
  const float* dw = static_cast<const float*>(
      c.cache.get(key, size_t(qw.out * qw.in), /*tag=*/1, fp, wbytes, c.s[0],
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
  a.mode = qw.kind == QKind::FP8 ? kDeqFp8 : (use_u ? kDeqIntAsym : kDeqIntSym);
  a.q8 = static_cast<const int8_t*>(c.tmp[0].get(0));
  a.qu = static_cast<const uint8_t*>(c.tmp[0].get(0));
  a.scales = static_cast<const float*>(c.tmp[1].get(0));
  a.zeros = use_u ? static_cast<const int32_t*>(c.tmp[2].get(0)) : nullptr;
  a.g_idx = qw.g_idx.empty() ? nullptr : static_cast<const int32_t*>(c.tmp[3].get(0));
  const int64_t items = (qw.in & 3) == 0 ? qw.out * qw.in / 4 : qw.out * qw.in;
  cudaEvent_t e0, e1;
  LLMC_CU(cudaEventCreate(&e0));
  LLMC_CU(cudaEventCreate(&e1));
  LLMC_CU(cudaEventRecord(e0, c.s[0]));
  for (int i = 0; i < reps; ++i)
    dequant_kernel<<<grid_for(items, 256), 256, 0, c.s[0]>>>(a, dw);
  LLMC_CU_LAUNCH("dequant_kernel");
  LLMC_CU(cudaEventRecord(e1, c.s[0]));
  LLMC_CU(cudaEventSynchronize(e1));
  float ms = 0;
  LLMC_CU(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return double(ms) * 1e-3 / reps;
}

}  // namespace llmc::backend::cuda
