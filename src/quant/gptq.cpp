// quant/gptq.cpp — Hessian accumulation, error measures and the GPTQ solver (quant/gptq.h).
#include "quant/gptq.h"

#include <cblas.h>
#include <lapack.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <optional>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "formats/ggml_types.h"
#include "quant/grid.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

// llmc runs OpenBLAS single-threaded and parallelizes over its own pool (model/linear.h).
void blas_single_threaded() { cpu::blas_init(); }

}  // namespace

ActOrder parse_act_order(const std::string& s) {
  if (s == "none") return ActOrder::None;
  if (s == "static") return ActOrder::Static;
  if (s == "dynamic") return ActOrder::Dynamic;
  fail("unknown act-order mode '", s, "' (known: none, static, dynamic)");
}

const char* act_order_name(ActOrder a) {
  switch (a) {
    case ActOrder::None: return "none";
    case ActOrder::Static: return "static";
    case ActOrder::Dynamic: return "dynamic";
  }
  return "?";
}

nlohmann::json GptqReport::to_json() const {
  nlohmann::json j = {{"rel_error", rel_error}, {"damp", damp}, {"dead_columns", dead_columns},
                      {"fallback_rtn", fallback}};
  if (rel_error_rtn >= 0) j["rel_error_rtn"] = rel_error_rtn;
  if (!reason.empty()) j["fallback_reason"] = reason;
  return j;
}

// ---------------------------------------------------------------------------------------------
// Error measures

namespace {

// x_r H x_rᵀ for every row r of x [rows, n] (fp64 dot products of fp32 products x · H, on the
// GPU when device() == CUDA), hf = H in fp32.
std::vector<double> quad_rows(const float* x, int64_t rows, int64_t n, const std::vector<float>& hf) {
  std::vector<double> q(size_t(std::max<int64_t>(rows, 0)), 0.0);
  if (rows <= 0 || n <= 0) return q;
  blas_single_threaded();
  auto dots = [&](const float* m, int64_t r0, int64_t rc, int64_t m0) {
    for (int64_t r = r0; r < r0 + rc; ++r) {
      double s = 0;
      const float* xr = x + r * n;
      const float* mr = m + (r - m0) * n;
      for (int64_t k = 0; k < n; ++k) s += double(xr[k]) * double(mr[k]);
      q[size_t(r)] = s;
    }
  };
  constexpr int64_t kRows = 32;
  const int64_t nchunks = (rows + kRows - 1) / kRows;
  if (backend::device() == backend::Device::CUDA) {
    // x · H on the GPU (H symmetric, so x · Hᵀ; fp32 whatever TF32 says: losses and reports),
    // the fp64 dot products here.
    std::vector<float> m(size_t(rows * n));
    if (backend::try_gemm_xwt(x, rows, n, hf.data(), n, m.data(), /*allow_tf32=*/false)) {
      parallel_for(0, size_t(nchunks), 1, [&](size_t c0, size_t c1) {
        for (size_t c = c0; c < c1; ++c) {
          const int64_t r0 = int64_t(c) * kRows;
          dots(m.data(), r0, std::min(kRows, rows - r0), 0);
        }
      });
      return q;
    }
  }
  parallel_for(0, size_t(nchunks), 1, [&](size_t c0, size_t c1) {
    std::vector<float> m(size_t(kRows * n));
    for (size_t c = c0; c < c1; ++c) {
      const int64_t r0 = int64_t(c) * kRows, rc = std::min(kRows, rows - r0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rc), int(n), int(n), 1.0f,
                  x + r0 * n, int(n), hf.data(), int(n), 0.0f, m.data(), int(n));
      dots(m.data(), r0, rc, r0);
    }
  });
  return q;
}

std::vector<float> to_f32(const double* H, int64_t n) {
  std::vector<float> hf(size_t(n * n));
  parallel_for(0, hf.size(), 1 << 16, [&](size_t a, size_t b) {
    for (size_t k = a; k < b; ++k) hf[k] = float(H[k]);
  });
  return hf;
}

}  // namespace

double hessian_quad_trace(const float* x, int64_t rows, int64_t n, const double* H) {
  if (rows <= 0 || n <= 0) return 0.0;
  const std::vector<double> q = quad_rows(x, rows, n, to_f32(H, n));
  return std::accumulate(q.begin(), q.end(), 0.0);
}

namespace {

// The stacked rows [W; Wq_1 - W; ...] ([(1 + wq.size()) · out, in]) whose x H xᵀ the errors are.
std::vector<float> stack_differences(const float* w, const std::vector<const float*>& wq,
                                     int64_t out, int64_t in) {
  const size_t m = size_t(out * in);
  std::vector<float> x(m * (wq.size() + 1));
  std::copy_n(w, m, x.begin());
  for (size_t k = 0; k < wq.size(); ++k) {
    float* d = x.data() + (k + 1) * m;
    const float* q = wq[k];
    parallel_for(0, m, size_t(1) << 16, [&](size_t a, size_t b) {
      for (size_t i = a; i < b; ++i) d[i] = q[i] - w[i];
    });
  }
  return x;
}

// x_r H x_rᵀ of every stacked row: one pass, H converted to fp32 once (x · H by the GPU GEMM
// offload when it takes it).
std::vector<double> stacked_quad_rows(const float* w, const std::vector<const float*>& wq,
                                      int64_t out, int64_t in, const double* H) {
  const std::vector<float> x = stack_differences(w, wq, out, in);
  return quad_rows(x.data(), out * int64_t(wq.size() + 1), in, to_f32(H, in));
}

// relative_output_errors on the host.
std::vector<double> relative_output_errors_host(const float* w, const std::vector<const float*>& wq,
                                                int64_t out, int64_t in, const double* H) {
  const std::vector<double> q = stacked_quad_rows(w, wq, out, in, H);
  auto seg = [&](size_t k) {
    return std::accumulate(q.begin() + ptrdiff_t(k * size_t(out)), q.begin() + ptrdiff_t((k + 1) * size_t(out)), 0.0);
  };
  const double den = seg(0);
  std::vector<double> r(wq.size(), 0.0);
  if (!(den > 0)) return r;
  for (size_t k = 0; k < wq.size(); ++k) r[k] = seg(k + 1) / den;
  return r;
}

}  // namespace

double relative_output_error(const float* w, const float* wq, int64_t out, int64_t in,
                             const double* H) {
  return relative_output_errors_host(w, {wq}, out, in, H)[0];
}

std::vector<double> relative_output_errors(const float* w, const std::vector<const float*>& wqs,
                                           int64_t out, int64_t in, const double* H) {
  std::vector<double> r(wqs.size(), 0.0);
  if (backend::device() != backend::Device::CUDA || out * in < (int64_t(1) << 16))
    return relative_output_errors_host(w, wqs, out, in, H);
  const int64_t sz = out * in, parts = int64_t(wqs.size()) + 1;
  const std::vector<float> hf = to_f32(H, in);
  const std::vector<float> x = stack_differences(w, wqs, out, in);
  backend::DeviceArray dh(in * in), dx(parts * sz), dm(parts * sz);
  dh.upload(hf.data(), in * in);
  dx.upload(x.data(), parts * sz);
  backend::dev::gemm_batched(false, parts * out, in, in, dx.data(), in, 0, dh.data(), in, 0,
                             dm.data(), in, 0, 1);
  std::vector<double> t(static_cast<size_t>(parts));
  backend::dev::seg_sums(backend::dev::SegOp::Dot, dx.data(), sz, dm.data(), sz, sz, parts,
                         t.data());
  if (!(t[0] > 0)) return r;
  for (size_t k = 0; k < wqs.size(); ++k) r[k] = t[k + 1] / t[0];
  return r;
}

namespace {

// The report's ratios from the row terms q = x_r H x_rᵀ of [ref; dq - ref (; dr - ref)]: whole
// (the rows summed in order) and, when `rows` (boundaries) is given, per row range.
void errors_from_row_quads(const std::vector<double>& q, bool rtn, int64_t out,
                           const std::vector<int64_t>& rows, GptqReport& rep) {
  const int parts = rtn ? 3 : 2;
  const std::vector<int64_t> whole = {0, out};
  const std::vector<int64_t>& rb = rows.empty() ? whole : rows;
  const size_t k = rb.size() - 1;
  std::vector<double> sum(size_t(parts) * k, 0.0), tot(size_t(parts), 0.0);
  for (int p = 0; p < parts; ++p)
    for (size_t i = 0; i < k; ++i) {
      for (int64_t r = rb[i]; r < rb[i + 1]; ++r) sum[size_t(p) * k + i] += q[size_t(p * out + r)];
      tot[size_t(p)] += sum[size_t(p) * k + i];
    }
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  rep.rel_error = ratio(tot[1], tot[0]);
  if (rtn) rep.rel_error_rtn = ratio(tot[2], tot[0]);
  if (rows.empty()) return;
  rep.rel_errors.assign(k, 0.0);
  if (rtn) rep.rel_errors_rtn.assign(k, 0.0);
  for (size_t i = 0; i < k; ++i) {
    rep.rel_errors[i] = ratio(sum[k + i], sum[i]);
    if (rtn) rep.rel_errors_rtn[i] = ratio(sum[2 * k + i], sum[i]);
  }
}

// The report's errors of dq (and of the RTN baseline dr, when not null) against ref: whole, and
// per row range when `rows` (boundaries) is given — then in one pass over the stacked rows
// [ref; dq - ref; dr - ref].
void fill_error_report(const float* ref, const float* dq, const float* dr, int64_t out, int64_t n,
                       const double* H, const std::vector<int64_t>& rows, GptqReport& rep) {
  if (rows.empty()) {
    if (dr) {
      const std::vector<double> e = relative_output_errors(ref, {dq, dr}, out, n, H);
      rep.rel_error = e[0];
      rep.rel_error_rtn = e[1];
    } else {
      rep.rel_error = relative_output_error(ref, dq, out, n, H);
    }
    return;
  }
  std::vector<const float*> wq = {dq};
  if (dr) wq.push_back(dr);
  errors_from_row_quads(stacked_quad_rows(ref, wq, out, n, H), dr != nullptr, out, rows, rep);
}

}  // namespace

std::vector<int32_t> diag_order(const double* H, int64_t n) {
  std::vector<int32_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) {
    return H[size_t(a) * n + a] > H[size_t(b) * n + b];
  });
  return perm;
}

QuantizedWeight permute_rows(const QuantizedWeight& qw, const std::vector<int32_t>& perm) {
  LLMC_CHECK(int64_t(perm.size()) == qw.out, "row permutation size");
  QuantizedWeight r = qw;
  const int64_t ng = qw.group == 0 ? 0 : qw.n_groups();
  for (int64_t i = 0; i < qw.out; ++i) {
    const int64_t src = perm[size_t(i)];
    LLMC_CHECK(src >= 0 && src < qw.out, "row permutation entry ", src);
    const size_t d0 = size_t(i * qw.in), s0 = size_t(src * qw.in);
    if (!qw.q8.empty()) std::copy_n(qw.q8.begin() + s0, qw.in, r.q8.begin() + d0);
    if (!qw.qu.empty()) std::copy_n(qw.qu.begin() + s0, qw.in, r.qu.begin() + d0);
    if (ng > 0) {
      std::copy_n(qw.scales.begin() + src * ng, ng, r.scales.begin() + i * ng);
      if (!qw.zeros.empty()) std::copy_n(qw.zeros.begin() + src * ng, ng, r.zeros.begin() + i * ng);
    }
    if (!qw.bias.empty()) r.bias[size_t(i)] = qw.bias[size_t(src)];
  }
  return r;
}

QuantizedWeight permute_cols(const QuantizedWeight& qw, const std::vector<int32_t>& perm) {
  LLMC_CHECK(int64_t(perm.size()) == qw.in, "column permutation size");
  for (int32_t c : perm) LLMC_CHECK(c >= 0 && c < qw.in, "column permutation entry ", c);
  QuantizedWeight r = qw;
  const int64_t in = qw.in;
  parallel_for(0, size_t(qw.out), 16, [&](size_t a, size_t b) {
    for (size_t row = a; row < b; ++row) {
      const size_t o = row * size_t(in);
      for (int64_t j = 0; j < in; ++j) {
        if (!qw.q8.empty()) r.q8[o + size_t(j)] = qw.q8[o + size_t(perm[size_t(j)])];
        if (!qw.qu.empty()) r.qu[o + size_t(j)] = qw.qu[o + size_t(perm[size_t(j)])];
      }
    }
  });
  if (!qw.g_idx.empty()) {
    bool trivial = qw.group > 0;
    for (int64_t j = 0; j < in; ++j) {
      r.g_idx[size_t(j)] = qw.g_idx[size_t(perm[size_t(j)])];
      trivial = trivial && r.g_idx[size_t(j)] == int32_t(j / qw.group);
    }
    if (trivial) r.g_idx.clear();
  }
  return r;
}

QuantizedWeight slice_rows(const QuantizedWeight& qw, int64_t r0, int64_t r1) {
  LLMC_CHECK(r0 >= 0 && r0 <= r1 && r1 <= qw.out, "row slice [", r0, ", ", r1, ") of ", qw.out);
  QuantizedWeight r = qw;
  r.out = r1 - r0;
  const size_t c0 = size_t(r0 * qw.in), c1 = size_t(r1 * qw.in);
  if (!qw.q8.empty()) r.q8.assign(qw.q8.begin() + ptrdiff_t(c0), qw.q8.begin() + ptrdiff_t(c1));
  if (!qw.qu.empty()) r.qu.assign(qw.qu.begin() + ptrdiff_t(c0), qw.qu.begin() + ptrdiff_t(c1));
  if (qw.group != 0) {
    const int64_t ng = qw.n_groups();
    r.scales.assign(qw.scales.begin() + r0 * ng, qw.scales.begin() + r1 * ng);
    if (!qw.zeros.empty()) r.zeros.assign(qw.zeros.begin() + r0 * ng, qw.zeros.begin() + r1 * ng);
  }
  if (!qw.bias.empty()) r.bias.assign(qw.bias.begin() + r0, qw.bias.begin() + r1);
  return r;
}

// ---------------------------------------------------------------------------------------------
// GPTQ

namespace {

constexpr int64_t kCudaMinElems = int64_t(1) << 20;  // out · in from which CUDA solves (Auto)

// Upper Cholesky factor U (row-major, lower triangle zero) of A⁻¹, A symmetric positive
// definite [n, n]. Returns false when a factorization fails.
bool inverse_cholesky_upper(std::vector<double>& a, int64_t n) {
  const lapack_int ni = lapack_int(n);
  lapack_int info = 0;
  const char lo = 'L';
  // The buffer is symmetric, so row- and column-major views coincide.
  LAPACK_dpotrf(&lo, &ni, a.data(), &ni, &info);
  if (info != 0) return false;
  LAPACK_dpotri(&lo, &ni, a.data(), &ni, &info);
  if (info != 0) return false;
  // Column-major lower triangle (i >= j at a[i + j n]) holds A⁻¹: mirror it.
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = j + 1; i < n; ++i) a[size_t(j + i * n)] = a[size_t(i + j * n)];
  LAPACK_dpotrf(&lo, &ni, a.data(), &ni, &info);
  if (info != 0) return false;
  // Column-major L with A⁻¹ = L Lᵀ; its row-major view is U = Lᵀ. Zero the stale half.
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < r; ++c) a[size_t(r * n + c)] = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = a[size_t(i * n + i)];
    if (!(d > 0) || !std::isfinite(d)) return false;
  }
  return true;
}

// Step 1: the layer in processing order (dead columns, finiteness, act-order permutation).
struct Layer {
  int64_t out = 0, n = 0;
  bool finite = true;
  std::vector<float> W;       // natural order, dead columns zeroed
  std::vector<double> h;      // natural order, dead diagonal set to 1
  std::vector<int32_t> perm;  // processing position -> column
  std::vector<float> Wp;      // processing order
  std::vector<double> hp;
  std::vector<float> imp;     // diag(H) in processing order
  std::vector<float> impn;    // diag(H) in natural order
  double mean_diag = 0;       // of hp
};

Layer prepare_layer(const float* w, int64_t out, int64_t n, const double* H, ActOrder order,
                    const std::vector<int32_t>& given, GptqReport& rep) {
  Layer L;
  L.out = out;
  L.n = n;
  L.h.assign(H, H + size_t(n * n));
  L.W.assign(w, w + size_t(out * n));
  for (double v : L.h) L.finite = L.finite && std::isfinite(v);
  for (int64_t i = 0; i < n; ++i) {
    if (L.h[size_t(i * n + i)] == 0.0) {
      L.h[size_t(i * n + i)] = 1.0;
      ++rep.dead_columns;
      for (int64_t r = 0; r < out; ++r) L.W[size_t(r * n + i)] = 0.0f;
    }
  }
  L.perm.resize(size_t(n));
  std::iota(L.perm.begin(), L.perm.end(), 0);
  if (order != ActOrder::None && L.finite) L.perm = given.empty() ? diag_order(L.h.data(), n) : given;
  L.Wp.resize(size_t(out * n));
  L.hp.resize(size_t(n * n));
  L.imp.resize(size_t(n));
  L.impn.resize(size_t(n));
  parallel_for(0, size_t(n), 64, [&](size_t j0, size_t j1) {
    for (size_t j = j0; j < j1; ++j) {
      const int64_t pj = L.perm[j];
      for (int64_t r = 0; r < out; ++r) L.Wp[size_t(r * n) + j] = L.W[size_t(r * n + pj)];
      for (int64_t k = 0; k < n; ++k) L.hp[j * n + size_t(k)] = L.h[size_t(pj * n + L.perm[size_t(k)])];
      L.imp[j] = float(L.h[size_t(pj * n + pj)]);
      L.impn[j] = float(L.h[j * n + j]);
    }
  });
  for (int64_t i = 0; i < n; ++i) L.mean_diag += L.hp[size_t(i * n + i)];
  L.mean_diag /= double(n);
  return L;
}

// Step 2: the parameter layout, and the parameters known before the solve: per channel (from
// the original row in processing order), static groups (natural contiguous groups of the
// original weights) and fixed fp8 scales. Dynamic groups are left to the solver.
void initial_params(const Layer& L, const GptqOptions& opt, QuantizedWeight& qw,
                    backend::GptqSolveJob& job, std::vector<int32_t>& gidx) {
  const int64_t n = L.n, gs = opt.group > 0 ? opt.group : n, ng = qw.n_groups();
  const QuantGrid& grid = opt.grid;
  const bool static_groups = opt.act_order == ActOrder::Static && opt.group > 0;
  const float* impp = opt.weighted_search ? L.imp.data() : nullptr;
  const float* impn = opt.weighted_search ? L.impn.data() : nullptr;
  job.group = opt.group > 0 ? opt.group : 0;
  job.param_stride = opt.group == 0 ? 0 : ng;
  job.imp = impp;
  if (grid.kind == QKind::FP8) {
    job.params_given = true;
    qw.scales = opt.fixed_scales;
    return;
  }
  if (opt.group > 0 && !static_groups) return;  // dynamic groups: in the solver
  job.params_given = true;
  if (static_groups) {
    gidx.resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) gidx[size_t(j)] = int32_t(L.perm[size_t(j)] / gs);
    job.gidx = gidx.data();
  }
  float* sc = qw.scales.data();
  int32_t* zr = qw.zeros.empty() ? nullptr : qw.zeros.data();
  parallel_for(0, size_t(L.out), 4, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      int32_t z = 0;
      if (opt.group <= 0) {
        group_params(grid, L.Wp.data() + r * n, n, impp, &sc[r], &z);
        if (zr) zr[r] = z;
        continue;
      }
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t c0 = g * gs, len = std::min(gs, n - c0);
        group_params(grid, L.W.data() + r * n + c0, len, impn ? impn + c0 : nullptr,
                     &sc[r * ng + g], &z);
        if (zr) zr[r * ng + g] = z;
      }
    }
  });
}

// Step 3a (CPU): damping retries around the inverse Cholesky factor, in fp64.
bool factor_cpu(const Layer& L, double damp, int retries, std::vector<float>& Uf, double* used) {
  const int64_t n = L.n;
  std::vector<double> U;
  bool ok = false;
  for (int t = 0; t <= retries && !ok; ++t, damp *= 10.0) {
    U = L.hp;
    const double lambda = damp * L.mean_diag;
    for (int64_t i = 0; i < n; ++i) U[size_t(i * n + i)] += lambda;
    ok = inverse_cholesky_upper(U, n);
    *used = damp;
  }
  if (ok) Uf.assign(U.begin(), U.end());
  return ok;
}

// A ggml type's grid for the column loop: at each block of `bs` columns of a row the type's
// encoder runs on the row's running weights (weighted by imp), its scales fix the block's affine
// grid a*c + b, the columns round onto it one by one, and the codes are packed at the block end.
struct GgmlRounding {
  const GgmlTypeTraits* t = nullptr;
  uint8_t* out = nullptr;  // [out, row_bytes]
  int64_t row_bytes = 0;
};

// Step 3b (CPU): the lazy-batch column loop of backend.h GptqSolveJob on W (modified); with
// `gg`, on that ggml type's grid (codes into gg->out, job.codes unused).
void columns_cpu(const backend::GptqSolveJob& job, const QuantGrid& grid,
                 const std::vector<float>& Uf, std::vector<float>& W, const GgmlRounding* gg = nullptr) {
  const int64_t n = job.n, out = job.out, B = job.block, gs = job.group;
  const int64_t rows_per_task = 16;
  const int64_t ntasks = (out + rows_per_task - 1) / rows_per_task;
  parallel_for(0, size_t(ntasks), 1, [&](size_t t0, size_t t1) {
    std::vector<float> E(size_t(rows_per_task * B));
    const int64_t bs = gg ? gg->t->block_size : 0;
    std::vector<float> ga(size_t(rows_per_task * bs)), gb(ga.size());
    std::vector<int> gc(ga.size());
    for (size_t t = t0; t < t1; ++t) {
      const int64_t r0 = int64_t(t) * rows_per_task, rc = std::min(rows_per_task, out - r0);
      for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = std::min(i1 + B, n), bw = i2 - i1;
        for (int64_t r = r0; r < r0 + rc; ++r) {
          float* wr = W.data() + r * n;
          float* er = E.data() + (r - r0) * B;
          for (int64_t j = i1; j < i2 && gg; ++j) {
            const int64_t jj = j % bs, k0 = (r - r0) * bs;
            uint8_t* blk = gg->out + r * gg->row_bytes + (j / bs) * gg->t->type_size;
            if (jj == 0) {
              gg->t->encode(wr + j, job.imp ? job.imp + j : nullptr, bs, blk);
              gg->t->grid(blk, ga.data() + k0, gb.data() + k0);
            }
            const float a = ga[size_t(k0 + jj)], b = gb[size_t(k0 + jj)];
            int c = gg->t->code_min;
            if (a != 0) c = std::clamp(int(std::lrintf((wr[j] - b) / a)), gg->t->code_min, gg->t->code_max);
            gc[size_t(k0 + jj)] = c;
            const float* u = Uf.data() + j * n;
            const float err = (wr[j] - (a * float(c) + b)) / u[j];
            er[j - i1] = err;
            for (int64_t k = j + 1; k < i2; ++k) wr[k] -= err * u[k];
            if (jj == bs - 1) gg->t->set_codes(blk, gc.data() + k0);
          }
          for (int64_t j = i1; j < i2 && !gg; ++j) {
            if (!job.params_given && gs > 0 && j % gs == 0) {
              const int64_t len = std::min(gs, n - j), p = r * job.param_stride + j / gs;
              int32_t z;
              group_params(grid, wr + j, len, job.imp ? job.imp + j : nullptr, &job.scales[p], &z);
              if (job.zeros) job.zeros[p] = z;
            }
            const int64_t p = r * job.param_stride +
                              (job.params_given ? (job.gidx ? job.gidx[j] : 0) : (gs > 0 ? j / gs : 0));
            const float s = job.scales[p];
            const int32_t z = job.zeros ? job.zeros[p] : 0;
            const int32_t c = grid_code(grid, wr[j], s, z);
            job.codes[size_t(r * n + j)] = c;
            const float* u = Uf.data() + j * n;
            const float err = grid_residual(grid, wr[j], c, s, z) / u[j];
            er[j - i1] = err;
            for (int64_t k = j + 1; k < i2; ++k) wr[k] -= err * u[k];
          }
        }
        if (i2 < n) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rc), int(n - i2), int(bw),
                      -1.0f, E.data(), int(B), Uf.data() + i1 * n + i2, int(n), 1.0f,
                      W.data() + r0 * n + i2, int(n));
        }
      }
    }
  });
}

bool use_cuda(const GptqOptions& opt, int64_t out, int64_t n) {
  switch (opt.solver) {
    case GptqSolver::Cpu: return false;
    case GptqSolver::Cuda:
      if (backend::device() != backend::Device::CUDA)
        fail("GPTQ solver cuda requested but the device is ", backend::device_name(backend::device()));
      return true;
    case GptqSolver::Auto: break;
  }
  if (backend::device() != backend::Device::CUDA) return false;
  if (const char* e = std::getenv("LLMC_GPTQ_SOLVER")) {
    const std::string v = e;
    if (v == "cpu") return false;
    if (v == "cuda") return true;
    if (v != "auto") fail("LLMC_GPTQ_SOLVER=", v, " (expected cpu, cuda or auto)");
  }
  return out * n >= kCudaMinElems;
}

// Step 4: codes back to natural order, g_idx.
// g_idx of the result: processing-order groups (dynamic act-order) or natural ones (static).
void set_g_idx(const GptqOptions& opt, const std::vector<int32_t>& perm, QuantizedWeight& qw) {
  const int64_t n = int64_t(perm.size()), gs = opt.group;
  if (gs <= 0 || opt.act_order == ActOrder::None) return;
  qw.g_idx.assign(size_t(n), 0);
  for (int64_t j = 0; j < n; ++j) {
    if (opt.act_order == ActOrder::Dynamic) qw.g_idx[size_t(perm[size_t(j)])] = int32_t(j / gs);
    else qw.g_idx[size_t(j)] = int32_t(j / gs);
  }
}

void assemble(const Layer& L, const GptqOptions& opt, const std::vector<int32_t>& codes,
              QuantizedWeight& qw) {
  const int64_t n = L.n, out = L.out;
  parallel_for(0, size_t(out), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < n; ++j)
        set_grid_code(qw, r * n + size_t(L.perm[size_t(j)]), codes[r * n + size_t(j)]);
  });
  set_g_idx(opt, L.perm, qw);
}

// The solver job's grid, damping and batch fields from the options (both solvers).
void fill_solve_job(const GptqOptions& opt, int64_t out, int64_t n, double mean_diag,
                    QuantizedWeight& qw, backend::GptqSolveJob& job) {
  job.out = out;
  job.n = n;
  job.damp = opt.damp;
  job.mean_diag = mean_diag;
  job.damp_retries = opt.damp_retries;
  job.fp8 = opt.grid.kind == QKind::FP8;
  job.bits = opt.grid.bits;
  job.symmetric = opt.grid.symmetric;
  job.sym_full_range = opt.grid.sym_full_range;
  job.fp16_scales = opt.grid.fp16_scales;
  job.search_steps = opt.grid.search_steps;
  job.min_shrink = opt.grid.min_shrink;
  // Lazy block size: a multiple of the group size so that every group lies in one block.
  job.block = std::max<int64_t>(1, opt.block_size);
  if (opt.group > 0) job.block = ((job.block + opt.group - 1) / opt.group) * opt.group;
  job.scales = qw.scales.data();
  job.zeros = qw.zeros.empty() ? nullptr : qw.zeros.data();
}

// Round-to-nearest on the option's grid (fallback and the report's baseline).
QuantizedWeight rtn_on_grid(const Layer& L, const GptqOptions& opt, bool weighted) {
  if (opt.grid.kind == QKind::FP8)
    return quantize_grid_fixed(L.W.data(), L.out, L.n, opt.group, opt.grid, opt.fixed_scales);
  return quantize_grid_rtn(L.W.data(), L.out, L.n, opt.group, opt.grid,
                           weighted ? L.impn.data() : nullptr);
}

void check_options(const GptqOptions& opt, int64_t out, int64_t in) {
  LLMC_CHECK(out > 0 && in > 0, "gptq shape");
  if (!opt.order.empty()) {
    LLMC_CHECK(int64_t(opt.order.size()) == in, "gptq order of ", opt.order.size(), " for ", in, " columns");
    std::vector<uint8_t> seen(size_t(in), 0);
    for (int32_t c : opt.order) {
      LLMC_CHECK(c >= 0 && c < in && !seen[size_t(c)], "gptq order is not a permutation");
      seen[size_t(c)] = 1;
    }
  }
  LLMC_CHECK(opt.h_add.empty() || int64_t(opt.h_add.size()) == in, "gptq h_add of ",
             opt.h_add.size(), " for ", in, " columns");
  if (!opt.report_rows.empty()) {
    LLMC_CHECK(opt.report_rows.front() == 0 && opt.report_rows.back() == out,
               "gptq report_rows must run from 0 to ", out);
    for (size_t i = 1; i < opt.report_rows.size(); ++i)
      LLMC_CHECK(opt.report_rows[i] > opt.report_rows[i - 1], "gptq report_rows must increase");
  }
  if (opt.error_ref) {
    LLMC_CHECK(opt.grid.kind == QKind::FP8, "gptq error_ref is for fp8 grids");
    LLMC_CHECK(opt.error_ref_scales.size() == opt.fixed_scales.size(),
               "gptq error_ref_scales must match fixed_scales");
  }
  if (opt.grid.kind == QKind::FP8) {
    LLMC_CHECK(opt.group == 0 || opt.group == -1, "fp8 gptq group ", opt.group);
    LLMC_CHECK(opt.fixed_scales.size() == size_t(opt.group == 0 ? 1 : out),
               "fp8 gptq needs ", opt.group == 0 ? 1 : out, " fixed scales, got ",
               opt.fixed_scales.size());
  } else {
    LLMC_CHECK(opt.group == -1 || opt.group > 0, "gptq group ", opt.group);
    LLMC_CHECK(opt.fixed_scales.empty(), "gptq: fixed scales are for fp8 grids");
    LLMC_CHECK(opt.grid.bits >= 2 && opt.grid.bits <= 8, "grid bits ", opt.grid.bits);
  }
}

// The CUDA path: the whole layer on the GPU (backend.h cuda_gptq_layer) from the natural-order
// W and H; the host only finds the dead columns and the processing order from diag(H). Returns
// nothing when H is not finite, its diagonal mean is not positive or every damping fails: the
// host path then decides (its reason, its RTN fallback), with the CPU semantics.
std::optional<GptqResult> gptq_quantize_cuda(const float* w, int64_t out, int64_t n,
                                             const double* H, const GptqOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  std::vector<uint8_t> bad(size_t(n), 0);
  parallel_for(0, size_t(n), 64, [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i)
      for (int64_t k = 0; k < n; ++k)
        if (!std::isfinite(H[i * size_t(n) + size_t(k)])) {
          bad[i] = 1;
          break;
        }
  });
  for (uint8_t b : bad)
    if (b) return std::nullopt;
  for (double v : opt.h_add)
    if (!std::isfinite(v)) return std::nullopt;
  GptqResult res;
  GptqReport& rep = res.report;
  std::vector<uint8_t> dead(size_t(n), 0);
  std::vector<double> diag(static_cast<size_t>(n));
  std::vector<float> impn(static_cast<size_t>(n));
  double mean_diag = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = H[size_t(i * n + i)] + (opt.h_add.empty() ? 0.0 : opt.h_add[size_t(i)]);
    if (d == 0.0) {
      d = 1.0;
      dead[size_t(i)] = 1;
      ++rep.dead_columns;
    }
    diag[size_t(i)] = d;
    impn[size_t(i)] = float(d);
    mean_diag += d;
  }
  mean_diag /= double(n);
  if (!(mean_diag > 0)) return std::nullopt;
  std::vector<int32_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order != ActOrder::None && !opt.order.empty()) perm = opt.order;
  else if (opt.act_order != ActOrder::None)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int32_t a, int32_t b) { return diag[size_t(a)] > diag[size_t(b)]; });

  QuantizedWeight& qw = res.qw;
  qw = grid_qweight(out, n, opt.group, opt.grid);
  backend::GptqLayerJob job;
  backend::GptqSolveJob& s = job.solve;
  fill_solve_job(opt, out, n, mean_diag, qw, s);
  s.group = opt.group > 0 ? opt.group : 0;
  s.param_stride = opt.group == 0 ? 0 : qw.n_groups();
  job.w = w;
  job.h = H;
  job.perm = perm.data();
  job.dead = dead.data();
  job.imp_nat = opt.weighted_search && !s.fp8 ? impn.data() : nullptr;
  job.static_groups = opt.act_order == ActOrder::Static && opt.group > 0;
  job.fixed_scales = s.fp8 ? opt.fixed_scales.data() : nullptr;
  job.report = opt.report_errors;
  job.report_rtn = opt.report_errors && opt.report_rtn;
  job.h_add = opt.h_add.empty() ? nullptr : opt.h_add.data();
  job.w_ref = opt.error_ref;
  job.ref_scales = opt.error_ref ? opt.error_ref_scales.data() : nullptr;
  job.code_bytes = qw.q8.empty() ? qw.qu.data() : reinterpret_cast<uint8_t*>(qw.q8.data());
  rep.seconds_prepare = since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  if (!backend::cuda_gptq_layer(job)) return std::nullopt;
  rep.damp = s.damp_used;
  set_g_idx(opt, perm, qw);
  if (opt.report_errors)
    errors_from_row_quads(job.row_quads, job.report_rtn, out, opt.report_rows, rep);
  rep.seconds_solve = since(t1);  // the device's report included
  return res;
}

}  // namespace

namespace {

// Each row encoded by the ggml type alone (weighted by imp when given): the fallback and the
// report's baseline of GPTQ on a ggml grid.
std::vector<uint8_t> ggml_rtn(const GgmlTypeTraits& t, const float* w, int64_t out, int64_t n, const float* imp) {
  std::vector<uint8_t> q(size_t(out) * ggml_row_bytes(t.type, uint64_t(n)));
  ggml_encode_rows(t, w, out, n, imp, q.data());
  return q;
}
std::vector<float> ggml_dequantize(const GgmlTypeTraits& t, const std::vector<uint8_t>& q, int64_t out, int64_t n) {
  std::vector<float> y(size_t(out * n));
  ggml_decode_rows(t, q.data(), out, n, y.data());
  return y;
}

// GPTQ on a ggml type's grid (opt.ggml): the CPU solver's steps with natural column order and
// the type's blocks as groups; the result is the type's row bytes (GptqResult::ggml).
GptqResult gptq_quantize_ggml(const float* w, int64_t out, int64_t n, const double* H, const GptqOptions& opt,
                              const std::string& name) {
  const GgmlTypeTraits& t = *opt.ggml;
  LLMC_CHECK(t.grid != nullptr, "gptq: ", t.name, " is not a quantized ggml type");
  LLMC_CHECK(n % t.block_size == 0, "gptq: ", n, " columns are not a multiple of the ", t.name, " block ",
             t.block_size);
  LLMC_CHECK(opt.act_order == ActOrder::None, "gptq on ggml grids keeps the natural column order");
  LLMC_CHECK(opt.h_add.empty() && !opt.error_ref, "gptq on ggml grids: no h_add / error_ref");
  blas_single_threaded();
  GptqResult res;
  GptqReport& rep = res.report;
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  Layer L = prepare_layer(w, out, n, H, ActOrder::None, {}, rep);
  rep.seconds_prepare = since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  const float* imp = opt.weighted_search ? L.impn.data() : nullptr;
  bool ok = false;
  if (!L.finite) rep.reason = "Hessian is not finite";
  else if (!(L.mean_diag > 0)) rep.reason = "Hessian diagonal mean is not positive";
  else {
    QuantizedWeight unused;
    backend::GptqSolveJob job;
    fill_solve_job(opt, out, n, L.mean_diag, unused, job);
    job.block = ((std::max<int64_t>(1, opt.block_size) + t.block_size - 1) / t.block_size) * t.block_size;
    job.imp = imp;
    std::vector<float> Uf;
    ok = factor_cpu(L, opt.damp, opt.damp_retries, Uf, &job.damp_used);
    if (ok) {
      GgmlRounding gg{&t, nullptr, int64_t(ggml_row_bytes(t.type, uint64_t(n)))};
      res.ggml.assign(size_t(out * gg.row_bytes), 0);
      gg.out = res.ggml.data();
      columns_cpu(job, opt.grid, Uf, L.Wp, &gg);
      rep.damp = job.damp_used;
    } else {
      rep.reason = cat("Cholesky failed up to damping ", job.damp_used);
    }
  }
  if (!ok) {
    rep.fallback = true;
    log_warn(cat(name, ": GPTQ ", rep.reason, "; falling back to the ", t.name, " encoder"));
    res.ggml = ggml_rtn(t, L.W.data(), out, n, L.finite ? imp : nullptr);
  }
  rep.seconds_solve = since(t1);
  const auto t2 = std::chrono::steady_clock::now();
  if (!L.finite) {
    rep.rel_error = -1;
  } else if (opt.report_errors) {
    const std::vector<float> dq = ggml_dequantize(t, res.ggml, out, n);
    std::vector<float> dr;
    if (opt.report_rtn) dr = ggml_dequantize(t, ggml_rtn(t, L.W.data(), out, n, imp), out, n);
    fill_error_report(w, dq.data(), dr.empty() ? nullptr : dr.data(), out, n, H, opt.report_rows, rep);
  }
  rep.seconds_report = since(t2);
  return res;
}

}  // namespace

GptqResult gptq_quantize(const float* w, int64_t out, int64_t in, const double* H,
                         const GptqOptions& opt, const std::string& name) {
  if (opt.ggml) {
    LLMC_CHECK(out > 0 && in > 0, "gptq shape");
    return gptq_quantize_ggml(w, out, in, H, opt, name);
  }
  check_options(opt, out, in);
  if (use_cuda(opt, out, in)) {
    if (std::optional<GptqResult> r = gptq_quantize_cuda(w, out, in, H, opt)) return std::move(*r);
    // Not finite, no positive diagonal or no damping factorizes: the host path below (its
    // reason, its fallback; the CPU factorization when the GPU's failed).
    GptqOptions o = opt;
    o.solver = GptqSolver::Cpu;
    return gptq_quantize(w, out, in, H, o, name);
  }
  blas_single_threaded();
  const int64_t n = in;
  GptqResult res;
  GptqReport& rep = res.report;
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  std::vector<double> hs;  // H + diag(h_add) for the solver
  if (!opt.h_add.empty()) {
    hs.assign(H, H + size_t(n * n));
    for (int64_t i = 0; i < n; ++i) hs[size_t(i * n + i)] += opt.h_add[size_t(i)];
  }
  Layer L = prepare_layer(w, out, n, hs.empty() ? H : hs.data(), opt.act_order, opt.order, rep);
  rep.seconds_prepare = since(t0);
  const auto t1 = std::chrono::steady_clock::now();

  QuantizedWeight& qw = res.qw;
  qw = grid_qweight(out, n, opt.group, opt.grid);
  backend::GptqSolveJob job;
  std::vector<int32_t> gidx, codes;
  bool ok = false;
  if (!L.finite) {
    rep.reason = "Hessian is not finite";
  } else if (!(L.mean_diag > 0)) {
    rep.reason = "Hessian diagonal mean is not positive";
  } else {
    initial_params(L, opt, qw, job, gidx);
    fill_solve_job(opt, out, n, L.mean_diag, qw, job);
    job.w = L.Wp.data();
    job.h = L.hp.data();
    codes.assign(size_t(out * n), 0);
    job.codes = codes.data();
    std::vector<float> Uf;  // the CPU solver (the CUDA path returned above)
    ok = factor_cpu(L, opt.damp, opt.damp_retries, Uf, &job.damp_used);
    if (ok) columns_cpu(job, opt.grid, Uf, L.Wp);
    if (ok) rep.damp = job.damp_used;
    else rep.reason = cat("Cholesky failed up to damping ", job.damp_used);
  }

  if (ok) {
    assemble(L, opt, codes, qw);
  } else {
    rep.fallback = true;
    log_warn(cat(name, ": GPTQ ", rep.reason, "; falling back to round-to-nearest"));
    qw = rtn_on_grid(L, opt, opt.weighted_search && L.finite);
  }

  rep.seconds_solve = since(t1);
  const auto t2 = std::chrono::steady_clock::now();
  // Step 5: the report.
  if (!L.finite) {
    rep.rel_error = -1;
  } else if (opt.report_errors) {
    const float* ref = opt.error_ref ? opt.error_ref : w;
    const std::vector<float> dq = qw.dequantize();
    std::vector<float> dr;
    if (opt.report_rtn)
      dr = (opt.error_ref ? quantize_grid_fixed(ref, out, n, opt.group, opt.grid,
                                                opt.error_ref_scales)
                          : rtn_on_grid(L, opt, opt.weighted_search)).dequantize();
    fill_error_report(ref, dq.data(), dr.empty() ? nullptr : dr.data(), out, n, H,
                      opt.report_rows, rep);
  }
  rep.seconds_report = since(t2);
  return res;
}

}  // namespace llmc
