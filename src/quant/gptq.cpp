// quant/gptq.cpp — Hessian accumulation, group parameters and the GPTQ solver (quant/gptq.h).
#include "quant/gptq.h"

#include <cblas.h>
#include <lapack.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

// llmc runs OpenBLAS single-threaded and parallelizes over its own pool (model/linear.h).
void blas_single_threaded() { cpu::blas_init(); }


float round_scale(const QuantGrid& g, float s) {
  if (!(s > 0.0f) || !std::isfinite(s)) return 1.0f;
  if (!g.fp16_scales) return s;
  float r = f16_to_f32(f32_to_f16(s));
  if (!(r > 0.0f)) r = 5.9604645e-08f;  // smallest fp16 subnormal
  if (!std::isfinite(r)) r = 65504.0f;
  return r;
}

void params_for_shrink(const QuantGrid& g, float lo, float hi, double shrink, float* scale,
                       int32_t* zero) {
  if (g.symmetric) {
    const double amax = std::max(std::fabs(double(lo)), std::fabs(double(hi))) * shrink;
    const double d = g.sym_full_range ? double(1 << (g.bits - 1)) - 0.5
                                      : double((1 << (g.bits - 1)) - 1);
    *scale = amax > 0 ? round_scale(g, float(amax / d)) : 1.0f;
    *zero = 0;
    return;
  }
  const double l = std::min(double(lo), 0.0) * shrink, h = std::max(double(hi), 0.0) * shrink;
  const int32_t qmax = (1 << g.bits) - 1;
  if (!(h - l > 0)) {
    *scale = 1.0f;
    *zero = 0;
    return;
  }
  const float s = round_scale(g, float((h - l) / qmax));
  *scale = s;
  *zero = std::clamp(int32_t(std::nearbyint(-l / double(s))), 0, qmax);
}

inline float deq(int32_t q, int32_t z, float s) { return float(q - z) * s; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Group parameters

void group_params_shrink(const QuantGrid& g, const float* v, int64_t n, double shrink,
                         float* scale, int32_t* zero) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  params_for_shrink(g, lo, hi, shrink, scale, zero);
}

double group_error(const QuantGrid& g, const float* v, int64_t n, const float* imp, float scale,
                   int32_t zero) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t q = int_quantize_value(v[i], scale, zero, g.bits, g.symmetric);
    const double d = double(deq(q, zero, scale)) - double(v[i]);
    e += (imp ? double(imp[i]) : 1.0) * d * d;
  }
  return e;
}

void group_params(const QuantGrid& g, const float* v, int64_t n, const float* imp, float* scale,
                  int32_t* zero) {
  LLMC_CHECK(g.bits >= 2 && g.bits <= 8, "grid bits ", g.bits);
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  params_for_shrink(g, lo, hi, 1.0, scale, zero);
  if (g.search_steps <= 0 || !(hi > lo)) return;
  double best = group_error(g, v, n, imp, *scale, *zero);
  const double step = (1.0 - g.min_shrink) / g.search_steps;
  for (int k = 1; k <= g.search_steps; ++k) {
    float s;
    int32_t z;
    params_for_shrink(g, lo, hi, 1.0 - step * k, &s, &z);
    const double e = group_error(g, v, n, imp, s, z);
    if (e < best) {
      best = e;
      *scale = s;
      *zero = z;
    }
  }
}

namespace {

QuantizedWeight empty_qweight(int64_t out, int64_t in, int64_t group, const QuantGrid& g) {
  QuantizedWeight qw;
  qw.kind = QKind::INT;
  qw.bits = g.bits;
  qw.symmetric = g.symmetric;
  qw.out = out;
  qw.in = in;
  qw.group = group;
  const int64_t ng = qw.n_groups();
  qw.scales.assign(size_t(out * ng), 1.0f);
  if (g.symmetric) {
    qw.q8.assign(size_t(out * in), 0);
  } else {
    qw.qu.assign(size_t(out * in), 0);
    qw.zeros.assign(size_t(out * ng), 0);
  }
  return qw;
}

inline void set_code(QuantizedWeight& qw, size_t k, int32_t c) {
  if (qw.symmetric) qw.q8[k] = int8_t(c);
  else qw.qu[k] = uint8_t(c);
}

}  // namespace

QuantizedWeight quantize_grid_rtn(const float* w, int64_t out, int64_t in, int64_t group,
                                  const QuantGrid& g, const float* imp) {
  LLMC_CHECK(group == -1 || group > 0, "grid group ", group);
  QuantizedWeight qw = empty_qweight(out, in, group, g);
  const int64_t gs = group > 0 ? group : in;
  const int64_t ng = qw.n_groups();
  const size_t grain = std::max<size_t>(1, size_t(16384 / std::max<int64_t>(in, 1)));
  parallel_for(0, size_t(out), grain, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t c0 = gi * gs, n = std::min(gs, in - c0);
        const float* v = w + r * in + c0;
        float s;
        int32_t z;
        group_params(g, v, n, imp ? imp + c0 : nullptr, &s, &z);
        qw.scales[r * ng + gi] = s;
        if (!g.symmetric) qw.zeros[r * ng + gi] = z;
        for (int64_t i = 0; i < n; ++i)
          set_code(qw, r * in + c0 + i, int_quantize_value(v[i], s, z, g.bits, g.symmetric));
      }
    }
  });
  return qw;
}

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

double hessian_quad_trace(const float* x, int64_t rows, int64_t n, const double* H) {
  if (rows <= 0 || n <= 0) return 0.0;
  blas_single_threaded();
  std::vector<float> hf(size_t(n * n));
  for (size_t k = 0; k < hf.size(); ++k) hf[k] = float(H[k]);
  constexpr int64_t kRows = 32;
  const int64_t nchunks = (rows + kRows - 1) / kRows;
  std::vector<double> part(size_t(nchunks), 0.0);
  parallel_for(0, size_t(nchunks), 1, [&](size_t c0, size_t c1) {
    std::vector<float> m(size_t(kRows * n));
    for (size_t c = c0; c < c1; ++c) {
      const int64_t r0 = int64_t(c) * kRows, rc = std::min(kRows, rows - r0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rc), int(n), int(n), 1.0f,
                  x + r0 * n, int(n), hf.data(), int(n), 0.0f, m.data(), int(n));
      double s = 0;
      for (int64_t k = 0; k < rc * n; ++k) s += double(x[r0 * n + k]) * double(m[size_t(k)]);
      part[c] = s;
    }
  });
  return std::accumulate(part.begin(), part.end(), 0.0);
}

double relative_output_error(const float* w, const float* wq, int64_t out, int64_t in,
                             const double* H) {
  std::vector<float> d(size_t(out * in));
  for (size_t k = 0; k < d.size(); ++k) d[k] = wq[k] - w[k];
  const double den = hessian_quad_trace(w, out, in, H);
  if (!(den > 0)) return 0.0;
  return hessian_quad_trace(d.data(), out, in, H) / den;
}

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

// ---------------------------------------------------------------------------------------------
// GPTQ

namespace {

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

}  // namespace

GptqResult gptq_quantize(const float* w, int64_t out, int64_t in, const double* H,
                         const GptqOptions& opt, const std::string& name) {
  LLMC_CHECK(out > 0 && in > 0, "gptq shape");
  LLMC_CHECK(opt.group == -1 || opt.group > 0, "gptq group ", opt.group);
  blas_single_threaded();
  const int64_t n = in;
  const QuantGrid& grid = opt.grid;
  GptqResult res;
  GptqReport& rep = res.report;

  // ---- dead columns, finiteness ----
  std::vector<double> h(H, H + size_t(n * n));
  std::vector<float> W(w, w + size_t(out * n));
  bool finite = true;
  for (double v : h) finite = finite && std::isfinite(v);
  for (int64_t i = 0; i < n; ++i) {
    if (h[size_t(i * n + i)] == 0.0) {
      h[size_t(i * n + i)] = 1.0;
      ++rep.dead_columns;
      for (int64_t r = 0; r < out; ++r) W[size_t(r * n + i)] = 0.0f;
    }
  }

  // ---- processing order ----
  std::vector<int32_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order != ActOrder::None && finite) perm = diag_order(h.data(), n);
  std::vector<float> Wp(size_t(out * n));
  std::vector<double> hp(size_t(n * n));
  std::vector<float> imp(static_cast<size_t>(n));  // diag(H) in processing order
  for (int64_t j = 0; j < n; ++j) {
    const int64_t pj = perm[size_t(j)];
    for (int64_t r = 0; r < out; ++r) Wp[size_t(r * n + j)] = W[size_t(r * n + pj)];
    for (int64_t k = 0; k < n; ++k) hp[size_t(j * n + k)] = h[size_t(pj * n + perm[size_t(k)])];
    imp[size_t(j)] = float(h[size_t(pj * n + pj)]);
  }

  // ---- damping + inverse Cholesky ----
  std::vector<double> U;
  bool ok = false;
  if (finite) {
    double mean_diag = 0;
    for (int64_t i = 0; i < n; ++i) mean_diag += hp[size_t(i * n + i)];
    mean_diag /= double(n);
    if (mean_diag > 0) {
      double damp = opt.damp;
      for (int t = 0; t <= opt.damp_retries && !ok; ++t, damp *= 10.0) {
        U = hp;
        const double lambda = damp * mean_diag;
        for (int64_t i = 0; i < n; ++i) U[size_t(i * n + i)] += lambda;
        ok = inverse_cholesky_upper(U, n);
        if (ok) rep.damp = damp;
      }
      if (!ok) rep.reason = cat("Cholesky failed up to damping ", damp / 10.0);
    } else {
      rep.reason = "Hessian diagonal mean is not positive";
    }
  } else {
    rep.reason = "Hessian is not finite";
  }

  const int64_t gs = opt.group > 0 ? opt.group : n;
  QuantizedWeight& qw = res.qw;
  std::vector<float> wq;  // dequantized result [out, n], natural order

  if (!ok) {
    rep.fallback = true;
    log_warn(cat(name, ": GPTQ ", rep.reason, "; falling back to round-to-nearest"));
    std::vector<float> impn(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) impn[size_t(i)] = finite ? float(h[size_t(i * n + i)]) : 1.0f;
    qw = quantize_grid_rtn(W.data(), out, n, opt.group, grid,
                           opt.weighted_search && finite ? impn.data() : nullptr);
  } else {
    std::vector<float> Uf(U.begin(), U.end());
    U.clear();
    U.shrink_to_fit();
    qw = empty_qweight(out, n, opt.group, grid);
    const int64_t ng = qw.n_groups();
    // Lazy block size: a multiple of the group size so that every group lies in one block.
    int64_t B = std::max<int64_t>(1, opt.block_size);
    if (opt.group > 0) B = ((B + gs - 1) / gs) * gs;
    const bool static_groups = opt.act_order == ActOrder::Static && opt.group > 0;
    // Processing position -> group index.
    std::vector<int32_t> gid(size_t(n), 0);
    if (opt.group > 0) {
      for (int64_t j = 0; j < n; ++j)
        gid[size_t(j)] = int32_t(static_groups ? perm[size_t(j)] / gs : j / gs);
    }
    std::vector<int32_t> codes(size_t(out * n));  // processing order
    const float* impp = opt.weighted_search ? imp.data() : nullptr;
    // Natural-order importance for static groups.
    std::vector<float> impn(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) impn[size_t(perm[size_t(j)])] = imp[size_t(j)];

    const int64_t rows_per_task = 16;
    const int64_t ntasks = (out + rows_per_task - 1) / rows_per_task;
    parallel_for(0, size_t(ntasks), 1, [&](size_t t0, size_t t1) {
      std::vector<float> E(size_t(rows_per_task * B));
      std::vector<float> tmp(static_cast<size_t>(n));
      for (size_t t = t0; t < t1; ++t) {
        const int64_t r0 = int64_t(t) * rows_per_task, rc = std::min(rows_per_task, out - r0);
        float* sc = qw.scales.data();
        int32_t* zr = qw.zeros.empty() ? nullptr : qw.zeros.data();
        // Up-front parameters: per channel, or static groups on the natural-order weights.
        for (int64_t r = r0; r < r0 + rc; ++r) {
          if (opt.group <= 0) {
            int32_t z;
            group_params(grid, Wp.data() + r * n, n, impp, &sc[r], &z);
            if (zr) zr[r] = z;
          } else if (static_groups) {
            for (int64_t g = 0; g < ng; ++g) {
              const int64_t c0 = g * gs, len = std::min(gs, n - c0);
              int32_t z;
              group_params(grid, W.data() + r * n + c0, len, impp ? impn.data() + c0 : nullptr,
                           &sc[r * ng + g], &z);
              if (zr) zr[r * ng + g] = z;
            }
          }
        }
        for (int64_t i1 = 0; i1 < n; i1 += B) {
          const int64_t i2 = std::min(i1 + B, n), bw = i2 - i1;
          for (int64_t r = r0; r < r0 + rc; ++r) {
            float* wr = Wp.data() + r * n;
            float* er = E.data() + (r - r0) * B;
            for (int64_t j = i1; j < i2; ++j) {
              if (opt.group > 0 && !static_groups && j % gs == 0) {
                const int64_t len = std::min(gs, n - j);
                int32_t z;
                group_params(grid, wr + j, len, impp ? impp + j : nullptr,
                             &sc[r * ng + j / gs], &z);
                if (zr) zr[r * ng + j / gs] = z;
              }
              const int64_t gi = opt.group > 0 ? gid[size_t(j)] : 0;
              const float s = sc[r * ng + gi];
              const int32_t z = zr ? zr[r * ng + gi] : 0;
              const int32_t c = int_quantize_value(wr[j], s, z, grid.bits, grid.symmetric);
              codes[size_t(r * n + j)] = c;
              const float* u = Uf.data() + j * n;
              const float err = (wr[j] - deq(c, z, s)) / u[j];
              er[j - i1] = err;
              for (int64_t k = j + 1; k < i2; ++k) wr[k] -= err * u[k];
            }
          }
          if (i2 < n) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rc), int(n - i2), int(bw),
                        -1.0f, E.data(), int(B), Uf.data() + i1 * n + i2, int(n), 1.0f,
                        Wp.data() + r0 * n + i2, int(n));
          }
        }
      }
    });
    for (int64_t r = 0; r < out; ++r)
      for (int64_t j = 0; j < n; ++j)
        set_code(qw, size_t(r * n + perm[size_t(j)]), codes[size_t(r * n + j)]);
    if (opt.act_order == ActOrder::Dynamic && opt.group > 0) {
      qw.g_idx.assign(size_t(n), 0);
      for (int64_t j = 0; j < n; ++j) qw.g_idx[size_t(perm[size_t(j)])] = int32_t(j / gs);
    } else if (static_groups) {
      qw.g_idx.assign(size_t(n), 0);
      for (int64_t c = 0; c < n; ++c) qw.g_idx[size_t(c)] = int32_t(c / gs);
    }
  }

  wq = qw.dequantize();
  if (finite) {
    rep.rel_error = relative_output_error(w, wq.data(), out, n, H);
    if (opt.report_rtn) {
      std::vector<float> impn(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) impn[size_t(i)] = float(h[size_t(i * n + i)]);
      const QuantizedWeight rq = quantize_grid_rtn(W.data(), out, n, opt.group, grid,
                                                   opt.weighted_search ? impn.data() : nullptr);
      const std::vector<float> rw = rq.dequantize();
      rep.rel_error_rtn = relative_output_error(w, rw.data(), out, n, H);
    }
  } else {
    rep.rel_error = -1;
  }
  return res;
}

}  // namespace llmc
