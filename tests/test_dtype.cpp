#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/threads.h"

using namespace llmc;

TEST(DType, TableIsConsistent) {
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto& tr = dtype_traits(DType(i));
    EXPECT_EQ(int(tr.dtype), i);
    DType back;
    ASSERT_TRUE(parse_dtype(tr.safetensors, &back)) << tr.safetensors;
    EXPECT_EQ(back, tr.dtype);
    ASSERT_TRUE(parse_dtype(tr.name, &back));
    EXPECT_EQ(back, tr.dtype);
  }
  DType t;
  EXPECT_TRUE(parse_dtype("F8_E4M3FN", &t));
  EXPECT_EQ(t, DType::F8_E4M3);
  EXPECT_FALSE(parse_dtype("F4", &t));
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
}

// Every 16-bit pattern decodes to the value the generic reference decodes, and encoding the
// decoded value gives the same pattern back (NaNs stay NaN).
TEST(DType, Bf16AllPatternsRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    const uint16_t back = f32_to_bf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(back)));
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
      ASSERT_EQ(minifloat_encode_ref(f, 8, 7, true, false), h);
    }
  }
}

TEST(DType, F16AllPatternsRoundTripAndMatchHardware) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    _Float16 hw;
    const uint16_t hh = uint16_t(h);
    std::memcpy(&hw, &hh, 2);
    const float fhw = float(hw);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fhw));
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_bits(f), f32_to_bits(fhw)) << std::hex << h;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
    ASSERT_EQ(minifloat_encode_ref(f, 5, 10, true, false), h);
  }
}

TEST(DType, F32ToHalfTypesMatchReferenceOnRandomAndTies) {
  std::mt19937 rng(1234);
  std::vector<float> vals;
  for (int i = 0; i < 200000; ++i) vals.push_back(bits_to_f32(rng()));
  // Exact ties and near-ties around every bf16/f16 pattern.
  for (uint32_t h = 0; h < 65536; h += 7) {
    const uint32_t b = uint32_t(h) << 16;
    vals.push_back(bits_to_f32(b | 0x8000u));          // bf16 tie
    vals.push_back(bits_to_f32(b | 0x7fffu));
    vals.push_back(bits_to_f32(b | 0x8001u));
    const float f = f16_to_f32(uint16_t(h));
    if (std::isfinite(f)) {
      const uint32_t u = f32_to_bits(f);
      vals.push_back(bits_to_f32(u + 0x1000u));  // f16 tie (13 dropped bits)
      vals.push_back(bits_to_f32(u + 0x0fffu));
    }
  }
  for (float v : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.98e-8f, 5.96e-8f,
                  std::ldexp(1.0f, -25), std::ldexp(3.0f, -26), 1e-45f, 3.4e38f}) {
    vals.push_back(v);
    vals.push_back(-v);
  }
  for (float v : vals) {
    if (std::isnan(v)) continue;
    ASSERT_EQ(f32_to_bf16(v), minifloat_encode_ref(v, 8, 7, true, false)) << v;
    ASSERT_EQ(f32_to_f16(v), minifloat_encode_ref(v, 5, 10, true, false)) << v;
    _Float16 hw = _Float16(v);
    uint16_t hb;
    std::memcpy(&hb, &hw, 2);
    ASSERT_EQ(f32_to_f16(v), hb) << v;
  }
}

TEST(DType, Fp8E4M3AllPatterns) {
  int nan_count = 0;
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = fp8e4m3_to_f32(uint8_t(v));
    if ((v & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f));
      ++nan_count;
      EXPECT_EQ(f32_to_fp8e4m3(f), v) << v;  // NaN keeps its sign
      continue;
    }
    ASSERT_FALSE(std::isnan(f));
    ASSERT_FALSE(std::isinf(f));
    ASSERT_EQ(f32_to_fp8e4m3(f), v) << v;
    ASSERT_EQ(minifloat_encode_ref(f, 4, 3, false, true), v);
  }
  EXPECT_EQ(nan_count, 2);
  EXPECT_EQ(fp8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
}

TEST(DType, Fp8E4M3SaturationTiesSubnormals) {
  EXPECT_EQ(f32_to_fp8e4m3(448.0f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(460.0f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(1e9f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(-1e9f), 0xfe);
  EXPECT_EQ(f32_to_fp8e4m3(INFINITY), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(-INFINITY), 0xfe);
  // 1.0625 is the tie between 1.0 (0x38) and 1.125 (0x39): even mantissa wins.
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3a);  // tie between 1.125 and 1.25 -> 1.25 (even)
  // Subnormal ties: quantum 2^-9; 0.5 quantum rounds to 0, 1.5 quanta to 2.
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(0.5f, -9)), 0x00);
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(1.5f, -9)), 0x02);
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(2.5f, -9)), 0x02);
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(7.5f, -9)), 0x08);  // rounds up into the normal range
  EXPECT_EQ(f32_to_fp8e4m3(-0.0f), 0x80);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-500.0f, 500.0f);
  for (int i = 0; i < 100000; ++i) {
    float v = d(rng) * std::ldexp(1.0f, int(rng() % 24) - 16);
    ASSERT_EQ(f32_to_fp8e4m3(v), minifloat_encode_ref(v, 4, 3, false, true)) << v;
  }
}

TEST(DType, Fp8E5M2AllPatternsAndSaturation) {
  for (uint32_t v = 0; v < 256; ++v) {
    const float f = fp8e5m2_to_f32(uint8_t(v));
    if ((v & 0x7c) == 0x7c && (v & 3)) {
      EXPECT_TRUE(std::isnan(f));
      EXPECT_TRUE(std::isnan(fp8e5m2_to_f32(f32_to_fp8e5m2(f))));
      continue;
    }
    ASSERT_EQ(f32_to_fp8e5m2(f), v) << v;
    ASSERT_EQ(minifloat_encode_ref(f, 5, 2, true, true), v);
  }
  EXPECT_EQ(fp8e5m2_to_f32(0x7b), 57344.0f);
  EXPECT_EQ(f32_to_fp8e5m2(1e6f), 0x7b);
  EXPECT_EQ(f32_to_fp8e5m2(INFINITY), 0x7c);
  std::mt19937 rng(9);
  for (int i = 0; i < 100000; ++i) {
    float v = bits_to_f32(rng());
    if (std::isnan(v)) continue;
    ASSERT_EQ(f32_to_fp8e5m2(v), minifloat_encode_ref(v, 5, 2, true, true)) << v;
  }
}

TEST(DType, IntegerStoresRoundAndSaturate) {
  int8_t i8[4];
  store_from_f32(DType::I8, i8, 0, 2.5f);
  store_from_f32(DType::I8, i8, 1, -3.5f);
  store_from_f32(DType::I8, i8, 2, 1000.0f);
  store_from_f32(DType::I8, i8, 3, NAN);
  EXPECT_EQ(i8[0], 2);
  EXPECT_EQ(i8[1], -4);
  EXPECT_EQ(i8[2], 127);
  EXPECT_EQ(i8[3], 0);
  int64_t big[2] = {(int64_t(1) << 53) + 1, -7};
  int64_t out[2];
  convert(DType::I64, big, DType::I64, out, 2);
  EXPECT_EQ(out[0], big[0]);
  int32_t o32[2];
  convert(DType::I64, big, DType::I32, o32, 2);
  EXPECT_EQ(o32[0], INT32_MAX);
  EXPECT_EQ(o32[1], -7);
  EXPECT_EQ(load_as_f32(DType::BOOL, "\x01", 0), 1.0f);
}

TEST(DType, BulkConvertMatchesScalarMultithreaded) {
  set_num_threads(4);
  const size_t n = (1 << 18) + 3;
  std::vector<uint16_t> src(n);
  std::mt19937 rng(3);
  for (auto& s : src) s = uint16_t(rng());
  std::vector<float> f(n);
  to_f32(DType::BF16, src.data(), f.data(), n);
  for (size_t i = 0; i < n; ++i) {
    const float e = bf16_to_f32(src[i]);
    if (std::isnan(e)) ASSERT_TRUE(std::isnan(f[i]));
    else ASSERT_EQ(f32_to_bits(f[i]), f32_to_bits(e));
  }
  std::vector<uint8_t> f8(n);
  convert(DType::F32, f.data(), DType::F8_E4M3, f8.data(), n);
  for (size_t i = 0; i < n; i += 97) ASSERT_EQ(f8[i], f32_to_fp8e4m3(f[i]));
  std::vector<uint16_t> h(n);
  convert(DType::BF16, src.data(), DType::F16, h.data(), n);
  for (size_t i = 0; i < n; i += 89) {
    if (!std::isnan(f[i])) ASSERT_EQ(h[i], f32_to_f16(f[i]));
  }
  set_num_threads(0);
}

TEST(Threads, ParallelForCoversRangeAndPropagatesErrors) {
  set_num_threads(3);
  std::vector<int> hit(10007, 0);
  parallel_for(0, hit.size(), 10, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) hit[i]++;
  });
  for (int h : hit) ASSERT_EQ(h, 1);
  EXPECT_THROW(parallel_for(0, 1000, 1, [&](size_t b, size_t) {
                 if (b == 500 || b > 900) throw std::runtime_error("boom");
               }),
               std::runtime_error);
  // Nested parallel_for runs serially without deadlock.
  std::atomic<int> sum{0};
  parallel_for(0, 8, 1, [&](size_t, size_t) {
    parallel_for(0, 4, 1, [&](size_t b, size_t e) { sum += int(e - b); });
  });
  EXPECT_EQ(sum.load(), 32);
  set_num_threads(0);
}

// Two threads issuing parallel regions back to back (quantize's writer thread beside the
// quantizing thread): every region runs each chunk exactly once and none hangs. A worker late
// from one region must not take an index of the next one.
TEST(Threads, ConcurrentCallersEachRunEveryChunkOnce) {
  set_num_threads(16);  // more workers than cores: late workers are likely
  std::atomic<int64_t> bad{0};
  auto caller = [&](int seed) {
    for (int rep = 0; rep < 3000; ++rep) {
      const size_t n = size_t(1 + (rep * 7 + seed) % 40);
      std::vector<std::atomic<int>> hit(n);
      for (auto& h : hit) h = 0;
      parallel_for(0, n, 1, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) hit[i]++;
      });
      for (auto& h : hit) bad += h.load() != 1;
    }
  };
  std::thread other(caller, 1);
  caller(2);
  other.join();
  EXPECT_EQ(bad.load(), 0);
  set_num_threads(0);
}

namespace llmc {
namespace {
// The lowest index of a NaN/Inf, also across the scan's chunks (2^18 elements), or -1.
TEST(FirstNonFinite, FindsTheLowestIndexAcrossChunks) {
  std::vector<float> v((size_t(1) << 19) + 77, 0.5f);
  EXPECT_EQ(first_non_finite(v.data(), v.size()), -1);
  EXPECT_EQ(first_non_finite(v.data(), 0), -1);
  v[v.size() - 1] = INFINITY;
  EXPECT_EQ(first_non_finite(v.data(), v.size()), int64_t(v.size() - 1));
  v[(size_t(1) << 18) + 5] = NAN;
  EXPECT_EQ(first_non_finite(v.data(), v.size()), int64_t((size_t(1) << 18) + 5));
  v[3] = -INFINITY;
  EXPECT_EQ(first_non_finite(v.data(), v.size()), 3);
  EXPECT_EQ(first_non_finite(v.data(), 3), -1);
}
}  // namespace
}  // namespace llmc
