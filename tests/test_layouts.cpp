// Tests of quant/qweight (reference decoder, activation fake-quantization), quant/packing and
// quant/layouts: hand-computed words for every bit width and layout, encode -> decode round
// trips bit-exact to QuantizedWeight::dequantize, config builders, and error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/layouts.h"
#include "quant/method.h"
#include "quant/packing.h"
#include "core/qweight.h"
#include "testing.h"

using namespace llmc;
using nlohmann::json;

namespace {

std::vector<uint32_t> pack(const std::vector<int32_t>& codes, int bits, PackScheme s) {
  std::vector<uint32_t> w(size_t(packed_words(int64_t(codes.size()), bits, s)));
  pack_codes(codes.data(), 1, int64_t(codes.size()), bits, s, w.data(), 1);
  return w;
}

std::vector<int32_t> unpack(const std::vector<uint32_t>& w, int64_t n, int bits, PackScheme s) {
  std::vector<int32_t> c(static_cast<size_t>(n));
  unpack_codes(w.data(), 1, n, bits, s, c.data(), 1);
  return c;
}

const EncodedTensor& find(const std::vector<EncodedTensor>& ts, const std::string& name) {
  for (const auto& t : ts)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

std::vector<uint32_t> words_of(const EncodedTensor& t) {
  EXPECT_EQ(t.dtype, DType::I32) << t.name;
  std::vector<uint32_t> w(t.bytes.size() / 4);
  std::memcpy(w.data(), t.bytes.data(), t.bytes.size());
  return w;
}

std::vector<float> floats_of(const EncodedTensor& t) {
  std::vector<float> v(t.bytes.size() / dtype_size(t.dtype));
  to_f32(t.dtype, t.bytes.data(), v.data(), v.size());
  return v;
}

MemoryTensorReader reader_of(std::vector<EncodedTensor> ts) {
  MemoryTensorReader r("test.safetensors");
  for (auto& t : ts) r.add(std::move(t));
  return r;
}

// Symmetric INT weight with codes given by f(o, i).
template <typename F>
QuantizedWeight sym_weight(int bits, int64_t out, int64_t in, int64_t group, F f) {
  QuantizedWeight w;
  w.kind = QKind::INT;
  w.bits = bits;
  w.symmetric = true;
  w.out = out;
  w.in = in;
  w.group = group;
  w.q8.resize(size_t(out * in));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) w.q8[size_t(o * in + i)] = int8_t(f(o, i));
  w.scales.assign(size_t(group == 0 ? 1 : out * w.n_groups()), 0.5f);
  return w;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// packing

TEST(Packing, StreamHandVectors) {
  // 4-bit: 8 codes per word, LSB first.
  EXPECT_EQ(pack({1, 2, 3, 4, 5, 6, 7, 8}, 4, PackScheme::Stream), std::vector<uint32_t>{0x87654321u});
  // 2-bit: code 0 = 3, code 15 = 1.
  std::vector<int32_t> c2(16, 0);
  c2[0] = 3;
  c2[15] = 1;
  EXPECT_EQ(pack(c2, 2, PackScheme::Stream), std::vector<uint32_t>{0x40000003u});
  // 8-bit.
  EXPECT_EQ(pack({0x11, 0x22, 0x33, 0x44}, 8, PackScheme::Stream), std::vector<uint32_t>{0x44332211u});
  // 3-bit (AutoGPTQ): 32 codes in 3 words; code 10 straddles words 0/1, code 21 words 1/2.
  std::vector<int32_t> c3(32, 0);
  c3[10] = 5;  // 0b101: bits 30 (1), 31 (0), 32 (1)
  EXPECT_EQ(pack(c3, 3, PackScheme::Stream), (std::vector<uint32_t>{0x40000000u, 0x1u, 0u}));
  c3.assign(32, 0);
  c3[21] = 1;  // bit 63
  EXPECT_EQ(pack(c3, 3, PackScheme::Stream), (std::vector<uint32_t>{0u, 0x80000000u, 0u}));
  c3[21] = 6;  // 0b110: bits 64, 65
  EXPECT_EQ(pack(c3, 3, PackScheme::Stream), (std::vector<uint32_t>{0u, 0u, 0x3u}));
  c3.assign(32, 0);
  c3[31] = 7;  // bits 93..95
  EXPECT_EQ(pack(c3, 3, PackScheme::Stream), (std::vector<uint32_t>{0u, 0u, 0xE0000000u}));
  c3.assign(32, 7);
  EXPECT_EQ(pack(c3, 3, PackScheme::Stream),
            (std::vector<uint32_t>{0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}));
}

TEST(Packing, FixedAndAwqHandVectors) {
  EXPECT_EQ(pack({0, 1, 2, 3, 4, 5, 6, 7}, 4, PackScheme::Fixed), std::vector<uint32_t>{0x76543210u});
  // 3-bit compressed-tensors: 10 codes per word, bits 30-31 unused; code 10 starts word 1.
  std::vector<int32_t> c(11, 0);
  c[0] = 7;
  c[9] = 7;
  c[10] = 5;
  EXPECT_EQ(pack(c, 3, PackScheme::Fixed), (std::vector<uint32_t>{0x38000007u, 0x5u}));
  // Padding: 5 codes of 4 bits still take a whole word.
  EXPECT_EQ(pack({1, 1, 1, 1, 1}, 4, PackScheme::Fixed), std::vector<uint32_t>{0x00011111u});
  // AWQ: nibble j holds code [0,2,4,6,1,3,5,7][j].
  EXPECT_EQ(pack({0, 1, 2, 3, 4, 5, 6, 7}, 4, PackScheme::Awq), std::vector<uint32_t>{0x75316420u});
  EXPECT_EQ(pack({1, 2, 3, 4, 5, 6, 7, 8}, 4, PackScheme::Awq), std::vector<uint32_t>{0x86427531u});
}

TEST(Packing, RoundTripEveryWidthAndScheme) {
  std::mt19937 rng(7);
  for (PackScheme s : {PackScheme::Stream, PackScheme::Fixed, PackScheme::Awq}) {
    for (int bits = 1; bits <= 8; ++bits) {
      if (s == PackScheme::Awq && bits != 4) continue;
      for (int64_t n : {1, 7, 32, 33, 96, 100}) {
        std::vector<int32_t> c(static_cast<size_t>(n));
        for (auto& v : c) v = int32_t(rng() % (1u << bits));
        EXPECT_EQ(unpack(pack(c, bits, s), n, bits, s), c) << int(s) << " bits " << bits << " n " << n;
      }
    }
  }
}

TEST(Packing, Errors) {
  EXPECT_THROW(pack({16}, 4, PackScheme::Stream), Error);
  EXPECT_THROW(pack({-1}, 4, PackScheme::Fixed), Error);
  EXPECT_THROW(pack({1}, 3, PackScheme::Awq), Error);
  EXPECT_THROW(pack({1}, 9, PackScheme::Stream), Error);
  EXPECT_EQ(packed_words(10, 3, PackScheme::Fixed), 1);
  EXPECT_EQ(packed_words(11, 3, PackScheme::Fixed), 2);
  EXPECT_EQ(packed_words(32, 3, PackScheme::Stream), 3);
  // A hostile shape (found by fuzz_layout_ct: 5.8e18 codes) is an error, not an overflow.
  EXPECT_THROW(packed_words(int64_t(5815867304876965888), 4, PackScheme::Stream), Error);
  EXPECT_THROW(packed_words(-1, 4, PackScheme::Fixed), Error);
}

// ---------------------------------------------------------------------------------------------
// QuantizedWeight

TEST(QWeight, DequantizeByHand) {
  // INT4 sym, group 2 with g_idx [1, 0, 1, 0] on a 2x4 weight.
  QuantizedWeight w;
  w.bits = 4;
  w.out = 2;
  w.in = 4;
  w.group = 2;
  w.q8 = {1, -2, 3, 7, -8, 0, 2, 1};
  w.scales = {0.5f, 0.25f, 2.0f, 1.0f};  // row 0: g0 0.5, g1 0.25; row 1: g0 2, g1 1
  w.g_idx = {1, 0, 1, 0};
  EXPECT_EQ(w.n_groups(), 2);
  EXPECT_EQ(w.group_of(0), 1);
  EXPECT_EQ(w.code(1, 0), -8);
  w.validate("w");
  EXPECT_EQ(w.dequantize(), (std::vector<float>{0.25f, -1.0f, 0.75f, 3.5f, -8.0f, 0.0f, 2.0f, 2.0f}));
  // Asymmetric, per channel.
  QuantizedWeight a;
  a.bits = 2;
  a.symmetric = false;
  a.out = 2;
  a.in = 2;
  a.qu = {0, 3, 1, 2};
  a.zeros = {1, 2};
  a.scales = {0.5f, 3.0f};
  a.validate("a");
  EXPECT_EQ(a.code(0, 1), 3);
  EXPECT_EQ(a.dequantize(), (std::vector<float>{-0.5f, 1.0f, -3.0f, 0.0f}));
  // FP8 per tensor: 0x38 = 1.0, 0xC0 = -2.0.
  QuantizedWeight f;
  f.kind = QKind::FP8;
  f.out = 1;
  f.in = 2;
  f.group = 0;
  f.q8 = {int8_t(0x38), int8_t(0xC0)};
  f.scales = {0.5f};
  f.validate("f");
  EXPECT_EQ(f.dequantize(), (std::vector<float>{0.5f, -1.0f}));
}

TEST(QWeight, ValidateErrors) {
  auto base = [] { return sym_weight(4, 2, 4, -1, [](int64_t, int64_t) { return 1; }); };
  QuantizedWeight w = base();
  w.q8[3] = 8;  // out of [-8, 7]
  EXPECT_NE(error_of([&] { w.validate("m.q_proj"); }).find("m.q_proj: code 8"), std::string::npos);
  w = base();
  w.scales.pop_back();
  EXPECT_NE(error_of([&] { w.validate("x"); }).find("expected 2 scales"), std::string::npos);
  w = base();
  w.scales[0] = NAN;
  EXPECT_NE(error_of([&] { w.validate("x"); }).find("not finite"), std::string::npos);
  w = base();
  w.bits = 9;
  EXPECT_THROW(w.validate("x"), Error);
  w = base();
  w.q8.pop_back();
  EXPECT_THROW(w.validate("x"), Error);
  w = base();
  w.zeros = {1, 1};
  EXPECT_THROW(w.validate("x"), Error);
  w = base();
  w.g_idx = {0, 0, 0, 0};  // needs group > 0
  EXPECT_THROW(w.validate("x"), Error);
  w = sym_weight(4, 2, 4, 2, [](int64_t, int64_t) { return 0; });
  w.g_idx = {0, 1, 2, 0};  // group 2 out of range
  EXPECT_NE(error_of([&] { w.validate("x"); }).find("g_idx[2]"), std::string::npos);
  w = base();
  w.bias = {1.0f};
  EXPECT_THROW(w.validate("x"), Error);
  w = base();
  w.act = ActQuant::FP8StaticTensor;
  EXPECT_NE(error_of([&] { w.validate("x"); }).find("input_scale"), std::string::npos);
  w = base();
  w.symmetric = false;  // asym needs qu + zeros
  EXPECT_THROW(w.validate("x"), Error);
  QuantizedWeight f;
  f.kind = QKind::FP8;
  f.bits = 4;
  EXPECT_THROW(f.validate("x"), Error);
  EXPECT_STREQ(act_quant_name(ActQuant::INT8DynamicToken), "int8_dynamic_token");
}

TEST(QWeight, ActivationQuantization) {
  // int8 per token: amax 127 -> scale 1; ties round to even.
  std::vector<float> x = {127.0f, 63.5f, -0.5f, 0.5f, 1.5f, 2.5f, -126.5f, 0.0f};
  quantize_activations(ActQuant::INT8DynamicToken, 0.0f, x.data(), 1, 8);
  EXPECT_EQ(x, (std::vector<float>{127.0f, 64.0f, -0.0f, 0.0f, 2.0f, 2.0f, -126.0f, 0.0f}));
  // Zero rows stay zero (scale 1, no NaN), for every kind.
  for (ActQuant a : {ActQuant::FP8DynamicToken, ActQuant::FP8DynamicTensor,
                     ActQuant::INT8DynamicToken}) {
    std::vector<float> z(6, 0.0f);
    quantize_activations(a, 0.0f, z.data(), 2, 3);
    for (float v : z) EXPECT_EQ(v, 0.0f);
  }
  // fp8 per token: row amax 448*2 -> scale 2; 3 -> fp8(1.5)*2 = 3; 2.3 -> fp8(1.15) = 1.125 -> 2.25.
  std::vector<float> f = {896.0f, 3.0f, 2.3f, -896.0f, 1.0f, 0.0f};
  quantize_activations(ActQuant::FP8DynamicToken, 0.0f, f.data(), 2, 3);
  EXPECT_EQ(f, (std::vector<float>{896.0f, 3.0f, 2.25f, -896.0f, 1.0f, 0.0f}));
  // fp8 per tensor dynamic: one scale for both rows (amax 896 -> 2): 1.0 -> fp8(0.5)*2 = 1.
  std::vector<float> t = {896.0f, 1.0f, 0.3f, 0.001f};
  quantize_activations(ActQuant::FP8DynamicTensor, 0.0f, t.data(), 2, 2);
  EXPECT_EQ(t[0], 896.0f);
  EXPECT_EQ(t[1], 1.0f);
  EXPECT_EQ(t[2], fp8e4m3_to_f32(f32_to_fp8e4m3(0.3f / 2.0f)) * 2.0f);
  EXPECT_EQ(t[3], 0.0f);  // 0.0005 is below half of fp8's smallest subnormal (2^-9)
  // fp8 static: saturates at 448 * scale.
  std::vector<float> s = {1000.0f, -1000.0f, 0.5f};
  quantize_activations(ActQuant::FP8StaticTensor, 1.0f, s.data(), 1, 3);
  EXPECT_EQ(s, (std::vector<float>{448.0f, -448.0f, 0.5f}));
  // int8 static: clamps to [-128, 127] * scale.
  std::vector<float> i8 = {1000.0f, -1000.0f, 0.74f};
  quantize_activations(ActQuant::INT8StaticTensor, 0.5f, i8.data(), 1, 3);
  EXPECT_EQ(i8, (std::vector<float>{63.5f, -64.0f, 0.5f}));
  // None leaves values alone; bad static scales throw.
  std::vector<float> n = {0.123f};
  quantize_activations(ActQuant::None, 0.0f, n.data(), 1, 1);
  EXPECT_EQ(n[0], 0.123f);
  EXPECT_THROW(quantize_activations(ActQuant::FP8StaticTensor, 0.0f, n.data(), 1, 1), Error);
  EXPECT_THROW(quantize_activations(ActQuant::INT8StaticTensor, NAN, n.data(), 1, 1), Error);
}

// ---------------------------------------------------------------------------------------------
// Hand-computed layouts

TEST(Layouts, GptqHandVectors) {
  const Layout& L = find_layout("gptq");
  // 4-bit: codes i - 8 -> stored i; per channel.
  auto w4 = sym_weight(4, 8, 8, -1, [](int64_t, int64_t i) { return int(i) - 8; });  // stored i
  auto t4 = L.encode("m", w4);
  EXPECT_EQ(find(t4, "m.qweight").shape, (Shape{1, 8}));
  EXPECT_EQ(words_of(find(t4, "m.qweight")), std::vector<uint32_t>(8, 0x76543210u));
  EXPECT_EQ(find(t4, "m.qzeros").shape, (Shape{1, 1}));
  EXPECT_EQ(words_of(find(t4, "m.qzeros")), std::vector<uint32_t>{0x77777777u});
  EXPECT_EQ(find(t4, "m.scales").dtype, DType::F16);
  EXPECT_EQ(find(t4, "m.scales").shape, (Shape{1, 8}));
  EXPECT_EQ(floats_of(find(t4, "m.scales")), std::vector<float>(8, 0.5f));
  EXPECT_EQ(find(t4, "m.g_idx").shape, (Shape{8}));
  // 2-bit, group 8 on in = 16: stored i % 4 -> 0xE4E4E4E4; zero 2 stored as 1 -> 0x55555555.
  auto w2 = sym_weight(2, 16, 16, 8, [](int64_t, int64_t i) { return int(i % 4) - 2; });
  auto t2 = L.encode("m", w2);
  EXPECT_EQ(find(t2, "m.qweight").shape, (Shape{1, 16}));
  EXPECT_EQ(words_of(find(t2, "m.qweight")), std::vector<uint32_t>(16, 0xE4E4E4E4u));
  EXPECT_EQ(find(t2, "m.qzeros").shape, (Shape{2, 1}));
  EXPECT_EQ(words_of(find(t2, "m.qzeros")), (std::vector<uint32_t>{0x55555555u, 0x55555555u}));
  std::vector<uint8_t> gi(find(t2, "m.g_idx").bytes);
  std::vector<int32_t> g(16);
  std::memcpy(g.data(), gi.data(), 64);
  EXPECT_EQ(g[7], 0);
  EXPECT_EQ(g[8], 1);
  // 8-bit: stored (i+1)*16 + o; zero 128 stored as 127.
  auto w8 = sym_weight(8, 4, 4, -1, [](int64_t o, int64_t i) { return int((i + 1) * 16 + o) - 128; });
  auto t8 = L.encode("m", w8);
  EXPECT_EQ(find(t8, "m.qweight").shape, (Shape{1, 4}));
  EXPECT_EQ(words_of(find(t8, "m.qweight")),
            (std::vector<uint32_t>{0x40302010u, 0x41312111u, 0x42322212u, 0x43332313u}));
  EXPECT_EQ(words_of(find(t8, "m.qzeros")), std::vector<uint32_t>{0x7F7F7F7Fu});
  // 3-bit (in = out = 32): stored i % 8 in every column; zero 4 stored as 3 (0b011).
  auto w3 = sym_weight(3, 32, 32, -1, [](int64_t, int64_t i) { return int(i % 8) - 4; });
  auto t3 = L.encode("m", w3);
  EXPECT_EQ(find(t3, "m.qweight").shape, (Shape{3, 32}));
  auto q3 = words_of(find(t3, "m.qweight"));  // row-major [3, 32]
  EXPECT_EQ(q3[0], 0x88FAC688u);
  EXPECT_EQ(q3[32], 0xC688FAC6u);
  EXPECT_EQ(q3[64], 0xFAC688FAu);
  EXPECT_EQ(q3[31], 0x88FAC688u);
  EXPECT_EQ(find(t3, "m.qzeros").shape, (Shape{1, 3}));
  EXPECT_EQ(words_of(find(t3, "m.qzeros")),
            (std::vector<uint32_t>{0xDB6DB6DBu, 0xB6DB6DB6u, 0x6DB6DB6Du}));
}

TEST(Layouts, AwqHandVectors) {
  const Layout& L = find_layout("awq");
  QuantizedWeight w;
  w.bits = 4;
  w.symmetric = false;
  w.out = 8;
  w.in = 8;
  w.group = 8;
  w.qu.resize(64);
  for (int64_t o = 0; o < 8; ++o)
    for (int64_t i = 0; i < 8; ++i) w.qu[size_t(o * 8 + i)] = uint8_t(o);
  w.zeros = {1, 2, 3, 4, 5, 6, 7, 8};
  w.scales.assign(8, 0.25f);
  auto t = L.encode("m", w);
  EXPECT_EQ(find(t, "m.qweight").shape, (Shape{8, 1}));
  EXPECT_EQ(words_of(find(t, "m.qweight")), std::vector<uint32_t>(8, 0x75316420u));
  EXPECT_EQ(find(t, "m.qzeros").shape, (Shape{1, 1}));
  EXPECT_EQ(words_of(find(t, "m.qzeros")), std::vector<uint32_t>{0x86427531u});
  EXPECT_EQ(find(t, "m.scales").dtype, DType::F16);
  EXPECT_EQ(find(t, "m.scales").shape, (Shape{1, 8}));
  // Symmetric weights are stored with zero 8 and codes + 8.
  auto s = sym_weight(4, 8, 8, 8, [](int64_t, int64_t) { return -8; });
  auto ts = L.encode("m", s);
  EXPECT_EQ(words_of(find(ts, "m.qweight")), std::vector<uint32_t>(8, 0u));
  EXPECT_EQ(words_of(find(ts, "m.qzeros")), std::vector<uint32_t>{0x88888888u});
}

TEST(Layouts, CompressedTensorsHandVectors) {
  const Layout& P = find_layout("pack-quantized");
  // 4-bit sym: row 0 codes -8..-1 -> stored 0..7; row 1 codes 0..7 -> stored 8..15.
  auto w = sym_weight(4, 2, 8, -1, [](int64_t o, int64_t i) { return int(i) - 8 + int(o) * 8; });
  auto t = P.encode("m", w);
  EXPECT_EQ(find(t, "m.weight_packed").shape, (Shape{2, 1}));
  EXPECT_EQ(words_of(find(t, "m.weight_packed")), (std::vector<uint32_t>{0x76543210u, 0xFEDCBA98u}));
  EXPECT_EQ(find(t, "m.weight_scale").dtype, DType::F32);
  EXPECT_EQ(find(t, "m.weight_scale").shape, (Shape{2, 1}));
  const auto& sh = find(t, "m.weight_shape");
  EXPECT_EQ(sh.dtype, DType::I64);
  int64_t dims[2];
  std::memcpy(dims, sh.bytes.data(), 16);
  EXPECT_EQ(dims[0], 2);
  EXPECT_EQ(dims[1], 8);
  EXPECT_THROW(find(t, "m.weight_zero_point"), std::runtime_error);
  // 8-bit sym: [-128, -1, 0, 127] -> [0, 127, 128, 255].
  auto w8 = sym_weight(8, 1, 4, -1, [](int64_t, int64_t i) { return std::vector<int>{-128, -1, 0, 127}[i]; });
  EXPECT_EQ(words_of(find(P.encode("m", w8), "m.weight_packed")), std::vector<uint32_t>{0xFF807F00u});
  // 3-bit: one dense bit stream (compressed-tensors since 2026); in = 11 -> ceil(33/32) = 2
  // words per row; code 10 (stored 5 = 0b101) straddles: bits 30-31 of word 0, bit 0 of word 1.
  auto w3 = sym_weight(3, 1, 11, -1, [](int64_t, int64_t i) { return i == 0 || i == 9 ? 3 : (i == 10 ? 1 : -4); });
  auto t3 = P.encode("m", w3);
  EXPECT_EQ(find(t3, "m.weight_packed").shape, (Shape{1, 2}));
  EXPECT_EQ(words_of(find(t3, "m.weight_packed")), (std::vector<uint32_t>{0x78000007u, 0x1u}));
  // 2-bit asym, group 4 on in = 8, out = 16: zero points packed along out: z = o % 4.
  QuantizedWeight a;
  a.bits = 2;
  a.symmetric = false;
  a.out = 16;
  a.in = 8;
  a.group = 4;
  a.qu.assign(128, 1);
  a.scales.assign(32, 1.0f);
  a.zeros.resize(32);
  for (int o = 0; o < 16; ++o) a.zeros[o * 2] = a.zeros[o * 2 + 1] = o % 4;
  auto ta = P.encode("m", a);
  EXPECT_EQ(find(ta, "m.weight_packed").shape, (Shape{16, 1}));
  EXPECT_EQ(words_of(find(ta, "m.weight_packed"))[0], 0x5555u);  // stored as is (q unsigned)
  EXPECT_EQ(find(ta, "m.weight_scale").shape, (Shape{16, 2}));
  EXPECT_EQ(find(ta, "m.weight_zero_point").shape, (Shape{1, 2}));
  EXPECT_EQ(words_of(find(ta, "m.weight_zero_point")), (std::vector<uint32_t>{0xE4E4E4E4u, 0xE4E4E4E4u}));
  // g_idx travels as weight_g_idx.
  auto wg = sym_weight(4, 2, 8, 4, [](int64_t, int64_t) { return 0; });
  wg.g_idx = {1, 1, 0, 0, 1, 0, 1, 0};
  auto tg = P.encode("m", wg);
  EXPECT_EQ(find(tg, "m.weight_g_idx").shape, (Shape{8}));
  EXPECT_EQ(find(tg, "m.weight_g_idx").dtype, DType::I32);

  // int-quantized: int8 weight + per-channel scale.
  auto wi = sym_weight(8, 2, 3, -1, [](int64_t o, int64_t i) { return int(o * 3 + i) - 3; });
  wi.act = ActQuant::INT8DynamicToken;
  auto ti = find_layout("int-quantized").encode("m", wi);
  EXPECT_EQ(find(ti, "m.weight").dtype, DType::I8);
  EXPECT_EQ(find(ti, "m.weight").shape, (Shape{2, 3}));
  EXPECT_EQ(find(ti, "m.weight").bytes, (std::vector<uint8_t>{0xFD, 0xFE, 0xFF, 0, 1, 2}));
  EXPECT_EQ(find(ti, "m.weight_scale").shape, (Shape{2, 1}));
  EXPECT_THROW(find(ti, "m.input_scale"), std::runtime_error);

  // float-quantized, per tensor + static input scale.
  QuantizedWeight f;
  f.kind = QKind::FP8;
  f.out = 2;
  f.in = 2;
  f.group = 0;
  f.q8 = {int8_t(0x38), int8_t(0xC0), 0, int8_t(0x7E)};
  f.scales = {0.125f};
  f.act = ActQuant::FP8StaticTensor;
  f.input_scale = 0.0625f;
  auto tf = find_layout("float-quantized").encode("m", f);
  EXPECT_EQ(find(tf, "m.weight").dtype, DType::F8_E4M3);
  EXPECT_EQ(find(tf, "m.weight").bytes, (std::vector<uint8_t>{0x38, 0xC0, 0, 0x7E}));
  EXPECT_EQ(find(tf, "m.weight_scale").shape, (Shape{1}));
  EXPECT_EQ(floats_of(find(tf, "m.weight_scale")), std::vector<float>{0.125f});
  EXPECT_EQ(find(tf, "m.input_scale").shape, (Shape{1}));
  EXPECT_EQ(floats_of(find(tf, "m.input_scale")), std::vector<float>{0.0625f});
  // The compressed-tensors row picks float-quantized for it.
  EXPECT_EQ(find_layout("compressed-tensors").encode("m", f).size(), tf.size());
}

// ---------------------------------------------------------------------------------------------
// Round trips: every writable layout x scheme; decode through the layout's own config.

namespace {

struct Scheme {
  std::string layout;
  QKind kind;
  int bits;
  bool sym;
  int64_t group;
  ActQuant act;
  bool g_idx;
  bool bias;
};

QuantizedWeight random_weight(const Scheme& s, int64_t out, int64_t in, std::mt19937& rng) {
  QuantizedWeight w;
  w.kind = s.kind;
  w.bits = s.bits;
  w.symmetric = s.sym;
  w.out = out;
  w.in = in;
  w.group = s.group;
  w.act = s.act;
  const size_t n = size_t(out * in);
  if (s.kind == QKind::FP8) {
    w.q8.resize(n);
    for (auto& v : w.q8) {
      uint8_t b = uint8_t(rng());
      if ((b & 0x7F) == 0x7F) b = 0x7E;  // no NaN
      v = int8_t(b);
    }
  } else if (s.sym) {
    w.q8.resize(n);
    for (auto& v : w.q8) v = int8_t(int(rng() % (1u << s.bits)) - (1 << (s.bits - 1)));
  } else {
    w.qu.resize(n);
    for (auto& v : w.qu) v = uint8_t(rng() % (1u << s.bits));
  }
  const size_t ns = s.group == 0 ? 1 : size_t(out * w.n_groups());
  std::uniform_real_distribution<float> U(1e-3f, 0.1f);
  w.scales.resize(ns);
  for (auto& v : w.scales) v = U(rng);
  if (!s.sym) {
    w.zeros.resize(ns);
    for (auto& z : w.zeros) z = int32_t(rng() % (1u << s.bits));
  }
  if (s.g_idx) {
    w.g_idx.resize(size_t(in));
    for (auto& g : w.g_idx) g = int32_t(rng() % uint32_t(w.n_groups()));
  }
  if (s.bias) {
    w.bias.resize(size_t(out));
    for (auto& b : w.bias) b = U(rng) - 0.05f;
  }
  if (s.act == ActQuant::FP8StaticTensor || s.act == ActQuant::INT8StaticTensor)
    w.input_scale = U(rng);
  return w;
}

}  // namespace

TEST(Layouts, RoundTripBitExact) {
  using A = ActQuant;
  const QKind I = QKind::INT, F = QKind::FP8;
  std::vector<Scheme> schemes = {
      // compressed-tensors pack-quantized
      {"pack-quantized", I, 2, false, 64, A::None, false, false},
      {"pack-quantized", I, 2, true, 32, A::None, true, false},
      {"pack-quantized", I, 3, false, 32, A::None, false, true},
      {"pack-quantized", I, 4, true, -1, A::None, false, false},
      {"pack-quantized", I, 4, false, 32, A::None, true, false},
      {"pack-quantized", I, 5, true, 32, A::None, false, false},
      {"pack-quantized", I, 8, true, -1, A::None, false, false},
      {"pack-quantized", I, 8, false, -1, A::None, false, false},
      {"pack-quantized", I, 4, true, 0, A::None, false, false},
      // int-quantized / float-quantized
      {"int-quantized", I, 8, true, -1, A::INT8DynamicToken, false, true},
      {"int-quantized", I, 8, true, 0, A::INT8StaticTensor, false, false},
      {"int-quantized", I, 8, true, -1, A::None, false, false},
      {"float-quantized", F, 8, true, 0, A::FP8StaticTensor, false, false},
      {"float-quantized", F, 8, true, -1, A::FP8DynamicToken, false, true},
      {"float-quantized", F, 8, true, -1, A::FP8DynamicTensor, false, false},
      {"float-quantized", F, 8, true, 32, A::None, false, false},
      {"compressed-tensors", I, 4, false, 32, A::None, false, false},
      {"compressed-tensors", F, 8, true, -1, A::FP8DynamicToken, false, false},
      {"compressed-tensors", I, 8, true, -1, A::INT8DynamicToken, false, false},
      // gptq
      {"gptq", I, 2, true, 32, A::None, false, false},
      {"gptq", I, 3, true, 32, A::None, false, false},
      {"gptq", I, 4, true, 32, A::None, true, true},
      {"gptq", I, 4, true, -1, A::None, false, false},
      {"gptq", I, 8, true, 64, A::None, false, false},
      // awq
      {"awq", I, 4, false, 32, A::None, false, false},
      {"awq", I, 4, true, 32, A::None, false, true},
  };
  std::mt19937 rng(1234);
  for (const Scheme& s : schemes) {
    SCOPED_TRACE(s.layout + " bits " + std::to_string(s.bits) + (s.sym ? " sym" : " asym") +
                 " group " + std::to_string(s.group) + " act " + act_quant_name(s.act));
    const Layout& L = find_layout(s.layout);
    QuantizedWeight w = random_weight(s, 64, 96, rng);
    round_scales(w, L.scale_dtype);
    ASSERT_TRUE(L.can_hold(w)) << L.why_not(w);
    QuantConfigSpec spec;
    spec.scheme = w;
    spec.ignore = {"lm_head"};
    const json qc = L.quantization_config(spec);
    const Layout& R = layout_for_config(qc, "config.json");
    EXPECT_EQ(std::string(R.quant_method), std::string(L.quant_method));
    MemoryTensorReader r = reader_of(L.encode("model.layers.0.mlp.up_proj", w));
    QuantizedWeight d = R.decode(r, "model.layers.0.mlp.up_proj", qc, 64, 96);
    EXPECT_TRUE(same_bits(d.dequantize(), w.dequantize()));
    EXPECT_EQ(d.act, w.act);
    EXPECT_EQ(d.input_scale, w.input_scale);
    EXPECT_EQ(d.bias, w.bias);
    EXPECT_EQ(d.kind, w.kind);
    EXPECT_EQ(d.bits, w.bits);
    if (s.layout != "awq") EXPECT_EQ(d.symmetric, w.symmetric);
    if (s.g_idx) EXPECT_EQ(d.g_idx, w.g_idx);
    // Shapes inferred from the tensors when not given.
    QuantizedWeight d2 = R.decode(r, "model.layers.0.mlp.up_proj", qc);
    EXPECT_EQ(d2.out, 64);
    EXPECT_EQ(d2.in, 96);
    EXPECT_EQ(R.weight_shape(r, "model.layers.0.mlp.up_proj", qc), (Shape{64, 96}));
    EXPECT_TRUE(is_quantized_module(r, "model.layers.0.mlp.up_proj"));
    EXPECT_EQ(quantized_modules(r), std::vector<std::string>{"model.layers.0.mlp.up_proj"});
  }
}

// ---------------------------------------------------------------------------------------------
// Configs

TEST(Layouts, ConfigBuilders) {
  QuantConfigSpec spec;
  spec.scheme.kind = QKind::FP8;
  spec.scheme.group = 0;
  spec.scheme.act = ActQuant::FP8StaticTensor;
  spec.ignore = {"lm_head", "model.layers.0.mlp.down_proj"};
  json c = find_layout("float-quantized").quantization_config(spec);
  EXPECT_EQ(c["quant_method"], "compressed-tensors");
  EXPECT_EQ(c["quantization_status"], "compressed");
  EXPECT_EQ(c["format"], "float-quantized");
  EXPECT_EQ(c["ignore"], json(spec.ignore));
  const json& g = c["config_groups"]["group_0"];
  EXPECT_EQ(g["targets"], json::array({"Linear"}));
  EXPECT_EQ(g["weights"]["num_bits"], 8);
  EXPECT_EQ(g["weights"]["type"], "float");
  EXPECT_EQ(g["weights"]["strategy"], "tensor");
  EXPECT_EQ(g["weights"]["symmetric"], true);
  EXPECT_EQ(g["weights"]["dynamic"], false);
  EXPECT_EQ(g["input_activations"]["strategy"], "tensor");
  EXPECT_EQ(g["input_activations"]["dynamic"], false);
  EXPECT_EQ(g["input_activations"]["type"], "float");

  spec.scheme.group = -1;
  spec.scheme.act = ActQuant::FP8DynamicToken;
  c = find_layout("compressed-tensors").quantization_config(spec);
  EXPECT_EQ(c["format"], "float-quantized");
  EXPECT_EQ(c["config_groups"]["group_0"]["weights"]["strategy"], "channel");
  EXPECT_EQ(c["config_groups"]["group_0"]["input_activations"]["strategy"], "token");
  EXPECT_EQ(c["config_groups"]["group_0"]["input_activations"]["dynamic"], true);

  spec.scheme = QuantizedWeight();
  spec.scheme.act = ActQuant::INT8DynamicToken;
  c = find_layout("compressed-tensors").quantization_config(spec);
  EXPECT_EQ(c["format"], "int-quantized");
  EXPECT_EQ(c["config_groups"]["group_0"]["input_activations"]["type"], "int");

  spec.scheme.act = ActQuant::None;
  spec.scheme.bits = 2;
  spec.scheme.symmetric = false;
  spec.scheme.group = 64;
  c = find_layout("compressed-tensors").quantization_config(spec);
  EXPECT_EQ(c["format"], "pack-quantized");
  EXPECT_EQ(c["config_groups"]["group_0"]["weights"]["group_size"], 64);
  EXPECT_EQ(c["config_groups"]["group_0"]["weights"]["strategy"], "group");
  EXPECT_EQ(c["config_groups"]["group_0"]["weights"]["symmetric"], false);
  EXPECT_TRUE(c["config_groups"]["group_0"]["input_activations"].is_null());

  spec.scheme.bits = 4;
  spec.scheme.symmetric = true;
  spec.scheme.group = 128;
  spec.extra = {{"true_sequential", false}, {"damp_percent", 0.02}};
  c = find_layout("gptq").quantization_config(spec);
  EXPECT_EQ(c["quant_method"], "gptq");
  EXPECT_EQ(c["bits"], 4);
  EXPECT_EQ(c["group_size"], 128);
  EXPECT_EQ(c["sym"], true);
  EXPECT_EQ(c["desc_act"], false);
  EXPECT_EQ(c["static_groups"], false);
  EXPECT_EQ(c["true_sequential"], false);
  EXPECT_EQ(c["damp_percent"], 0.02);
  EXPECT_EQ(c["checkpoint_format"], "gptq");
  EXPECT_TRUE(c["dynamic"].contains("-:.*model\\.layers\\.0\\.mlp\\.down_proj$"));

  spec.extra = json::object();
  c = find_layout("awq").quantization_config(spec);
  EXPECT_EQ(c, (json{{"quant_method", "awq"},
                     {"bits", 4},
                     {"group_size", 128},
                     {"zero_point", true},
                     {"version", "gemm"},
                     {"modules_to_not_convert", json(spec.ignore)}}));

  EXPECT_THROW(find_layout("fp8").quantization_config(spec), Error);
  spec.scheme.symmetric = false;
  EXPECT_NE(error_of([&] { find_layout("gptq").quantization_config(spec); })
                .find("asymmetric GPTQ cannot be stored as zero-1 in the gptq layout; use --layout "
                      "compressed-tensors"),
            std::string::npos);
}

TEST(Layouts, TableLookups) {
  EXPECT_NE(error_of([] { find_layout("gguf"); }).find("unknown layout 'gguf' (known: pack-quantized"),
            std::string::npos);
  EXPECT_EQ(layout_names(true).find("naive-quantized"), std::string::npos);
  EXPECT_NE(layout_names().find("naive-quantized"), std::string::npos);
  EXPECT_STREQ(layout_for_config({{"quant_method", "compressed-tensors"}, {"format", "naive-quantized"}}, "c").name,
               "naive-quantized");
  EXPECT_STREQ(layout_for_config({{"quant_method", "compressed-tensors"}, {"format", "mixed"}}, "c").name,
               "pack-quantized");
  EXPECT_STREQ(layout_for_config({{"quant_method", "gptq"}}, "c").name, "gptq");
  EXPECT_STREQ(layout_for_config({{"quant_method", "fp8"}}, "c").name, "fp8");
  EXPECT_NE(error_of([] { layout_for_config({{"quant_method", "bitsandbytes"}}, "x/config.json"); })
                .find("x/config.json: quant_method 'bitsandbytes' is not supported"),
            std::string::npos);
  EXPECT_THROW(layout_for_config(json::object(), "c"), Error);
  // Every row has its functions and a description.
  for (const Layout& l : layout_table()) {
    EXPECT_TRUE(l.why_not && l.encode_fn && l.decode_fn && l.config_fn) << l.name;
    EXPECT_GT(std::strlen(l.description), 10u) << l.name;
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(Layouts, EncodeRefusesWhatALayoutCannotHold) {
  auto asym = [] {
    QuantizedWeight a;
    a.bits = 4;
    a.symmetric = false;
    a.out = 8;
    a.in = 32;
    a.group = 32;
    a.qu.assign(256, 1);
    a.zeros.assign(8, 0);
    a.scales.assign(8, 1.0f);
    return a;
  };
  EXPECT_NE(error_of([&] { find_layout("gptq").encode("model.layers.1.mlp.up_proj", asym()); })
                .find("model.layers.1.mlp.up_proj: cannot write layout gptq: asymmetric GPTQ cannot be "
                      "stored as zero-1 in the gptq layout; use --layout compressed-tensors"),
            std::string::npos);
  auto g = sym_weight(4, 8, 32, 16, [](int64_t, int64_t) { return 0; });
  g.g_idx.assign(32, 0);
  g.g_idx[0] = 1;
  EXPECT_NE(error_of([&] { find_layout("awq").encode("m", g); }).find("no g_idx"), std::string::npos);
  auto w8 = sym_weight(8, 8, 32, 32, [](int64_t, int64_t) { return 0; });
  EXPECT_THROW(find_layout("awq").encode("m", w8), Error);
  auto pc = sym_weight(4, 8, 32, -1, [](int64_t, int64_t) { return 0; });
  auto npc = pc;
  npc.group = 0;
  npc.scales = {1.0f};
  EXPECT_THROW(find_layout("awq").encode("m", pc), Error);   // needs group > 0
  EXPECT_THROW(find_layout("gptq").encode("m", npc), Error);  // no per-tensor
  auto odd = sym_weight(4, 8, 12, -1, [](int64_t, int64_t) { return 0; });
  EXPECT_NE(error_of([&] { find_layout("gptq").encode("m", odd); }).find("in_features"), std::string::npos);
  auto act = pc;
  act.act = ActQuant::INT8DynamicToken;
  EXPECT_THROW(find_layout("pack-quantized").encode("m", act), Error);
  EXPECT_THROW(find_layout("gptq").encode("m", act), Error);
  EXPECT_THROW(find_layout("float-quantized").encode("m", pc), Error);
  EXPECT_THROW(find_layout("int-quantized").encode("m", pc), Error);  // 4-bit
  EXPECT_THROW(find_layout("naive-quantized").encode("m", pc), Error);
  EXPECT_THROW(find_layout("fp8").encode("m", pc), Error);
  auto a0 = asym();
  a0.group = 0;
  a0.scales = {1.0f};
  a0.zeros = {0};
  EXPECT_THROW(find_layout("pack-quantized").encode("m", a0), Error);
  // A scale that overflows fp16.
  auto big = pc;
  big.scales[0] = 1e6f;
  EXPECT_NE(error_of([&] { find_layout("gptq").encode("m", big); }).find("m.scales"), std::string::npos);
  // Invalid weights are refused before anything is written.
  auto bad = pc;
  bad.q8[0] = 9;
  EXPECT_THROW(find_layout("pack-quantized").encode("m", bad), Error);
}

TEST(Layouts, DecodeErrorsNameTheTensor) {
  const Layout& G = find_layout("gptq");
  auto w = sym_weight(4, 8, 32, -1, [](int64_t, int64_t) { return 1; });
  const json qc = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", -1}, {"sym", true}};
  auto enc = G.encode("m", w);
  auto without = [&](const std::string& name) {
    std::vector<EncodedTensor> v;
    for (const auto& t : enc)
      if (t.name != name) v.push_back(t);
    return reader_of(v);
  };
  auto with = [&](const std::string& name, auto mutate) {
    std::vector<EncodedTensor> v = enc;
    for (auto& t : v)
      if (t.name == name) mutate(t);
    return reader_of(v);
  };
  // Missing tensors.
  EXPECT_NE(error_of([&] { G.decode(without("m.qzeros"), "m", qc); })
                .find("test.safetensors: missing tensor m.qzeros"),
            std::string::npos);
  EXPECT_NE(error_of([&] { G.decode(without("m.scales"), "m", qc); }).find("m.scales"), std::string::npos);
  // g_idx is optional.
  EXPECT_EQ(G.decode(without("m.g_idx"), "m", qc).dequantize(), w.dequantize());
  // Wrong dtype.
  auto as_i32 = with("m.scales", [](EncodedTensor& t) {
    t.dtype = DType::I16;  // same byte size as f16
  });
  EXPECT_NE(error_of([&] { G.decode(as_i32, "m", qc); })
                .find("tensor m.scales has dtype I16, expected F32 or F16 or BF16"),
            std::string::npos);
  // Wrong shape.
  auto reshaped = with("m.qzeros", [](EncodedTensor& t) { t.shape = {2, 1}; t.bytes.resize(8); });
  EXPECT_NE(error_of([&] { G.decode(reshaped, "m", qc); })
                .find("tensor m.qzeros has shape [2, 1], expected [1, 1]"),
            std::string::npos);
  // NaN scale.
  auto nan = with("m.scales", [](EncodedTensor& t) { store_from_f32(t.dtype, t.bytes.data(), 2, NAN); });
  EXPECT_NE(error_of([&] { G.decode(nan, "m", qc); }).find("m.scales has a non-finite value at index 2"),
            std::string::npos);
  // Shape disagreeing with the model.
  EXPECT_NE(error_of([&] { G.decode(reader_of(enc), "m", qc, 8, 64); })
                .find("m in_features is 32 in the checkpoint, but the model expects 64"),
            std::string::npos);
  // g_idx out of range.
  auto gbad = with("m.g_idx", [](EncodedTensor& t) { t.bytes[0] = 5; });
  EXPECT_THROW(G.decode(gbad, "m", qc), Error);
  // Config problems.
  EXPECT_THROW(G.decode(reader_of(enc), "m", json{{"bits", 5}}), Error);
  EXPECT_THROW(G.decode(reader_of(enc), "m", json{{"bits", "4"}}), Error);
  EXPECT_THROW(G.decode(reader_of(enc), "m", json{{"bits", 4}, {"checkpoint_format", "marlin"}}), Error);
  // gptq_v2 stores the zero itself: the same words decode as asymmetric with zero 7.
  QuantizedWeight v2 = G.decode(reader_of(enc), "m", json{{"bits", 4}, {"checkpoint_format", "gptq_v2"}});
  EXPECT_FALSE(v2.symmetric);
  EXPECT_EQ(v2.zeros[0], 7);

  // compressed-tensors: a module no config group targets; missing weight_shape; bad strategy.
  const Layout& P = find_layout("pack-quantized");
  QuantConfigSpec spec;
  spec.scheme = w;
  json pc = P.quantization_config(spec);
  auto penc = P.encode("model.layers.0.mlp.up_proj", w);
  json other = pc;
  other["config_groups"]["group_0"]["targets"] = json::array({"re:.*q_proj$"});
  EXPECT_NE(error_of([&] { P.decode(reader_of(penc), "model.layers.0.mlp.up_proj", other); })
                .find("no compressed-tensors config group targets model.layers.0.mlp.up_proj"),
            std::string::npos);
  other["config_groups"]["group_0"]["targets"] = json::array({"re:.*up_proj$"});
  EXPECT_EQ(P.decode(reader_of(penc), "model.layers.0.mlp.up_proj", other).dequantize(), w.dequantize());
  other["config_groups"]["group_0"]["targets"] = json::array({"mlp.up_proj"});
  EXPECT_EQ(P.decode(reader_of(penc), "model.layers.0.mlp.up_proj", other).dequantize(), w.dequantize());
  std::vector<EncodedTensor> nosh;
  for (const auto& t : penc)
    if (t.name != "model.layers.0.mlp.up_proj.weight_shape") nosh.push_back(t);
  EXPECT_NE(error_of([&] { P.decode(reader_of(nosh), "model.layers.0.mlp.up_proj", pc); })
                .find("missing tensor model.layers.0.mlp.up_proj.weight_shape"),
            std::string::npos);
  json bad = pc;
  bad["config_groups"]["group_0"]["weights"]["strategy"] = "tensor_group";
  EXPECT_THROW(P.decode(reader_of(penc), "model.layers.0.mlp.up_proj", bad), Error);
  bad = pc;
  bad["config_groups"]["group_0"]["input_activations"] = {{"type", "int"}, {"num_bits", 4}};
  EXPECT_THROW(P.decode(reader_of(penc), "model.layers.0.mlp.up_proj", bad), Error);
  bad = pc;
  bad.erase("config_groups");
  EXPECT_THROW(P.decode(reader_of(penc), "model.layers.0.mlp.up_proj", bad), Error);
}

TEST(Layouts, ReadsVllmFp8Blocks) {
  // out 130, in 200, 128x128 blocks -> weight_scale_inv [2, 2].
  const int64_t out = 130, in = 200;
  std::mt19937 rng(3);
  std::vector<uint8_t> wb(size_t(out * in));
  for (auto& b : wb) {
    b = uint8_t(rng());
    if ((b & 0x7F) == 0x7F) b = 0;
  }
  std::vector<float> s = {0.5f, 0.25f, 2.0f, 4.0f};
  MemoryTensorReader r("fp8.safetensors");
  r.add(EncodedTensor{"m.weight", DType::F8_E4M3, {out, in}, wb});
  EncodedTensor st{"m.weight_scale_inv", DType::BF16, {2, 2}, std::vector<uint8_t>(8)};
  for (int k = 0; k < 4; ++k) store_from_f32(DType::BF16, st.bytes.data(), k, s[k]);
  r.add(st);
  const json qc = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"},
                   {"weight_block_size", {128, 128}}};
  const Layout& L = layout_for_config(qc, "c");
  QuantizedWeight w = L.decode(r, "m", qc, out, in);
  EXPECT_EQ(w.act, ActQuant::FP8DynamicToken);
  std::vector<float> d = w.dequantize();
  for (int64_t o : {0, 127, 128, 129})
    for (int64_t i : {0, 127, 128, 199}) {
      const float sc = s[size_t((o / 128) * 2 + i / 128)];
      EXPECT_EQ(d[size_t(o * in + i)], fp8e4m3_to_f32(wb[size_t(o * in + i)]) * sc) << o << "," << i;
    }
  // Per-tensor weight_scale with static activations.
  MemoryTensorReader t("fp8.safetensors");
  t.add(EncodedTensor{"m.weight", DType::F8_E4M3, {2, 2}, {0x38, 0x40, 0x30, 0xB8}});
  t.add(EncodedTensor{"m.weight_scale", DType::F32, {1}, std::vector<uint8_t>(4)});
  float two = 2.0f;
  EncodedTensor is{"m.input_scale", DType::F32, {1}, std::vector<uint8_t>(4)};
  std::memcpy(is.bytes.data(), &two, 4);
  t.add(is);
  const json sq = {{"quant_method", "fp8"}, {"activation_scheme", "static"}};
  // weight_scale 0 is refused? No: weight scales may be 0 (dead rows); input_scale must be > 0.
  EXPECT_EQ(find_layout("fp8").decode(t, "m", sq).dequantize(), std::vector<float>(4, 0.0f));
  EncodedTensor ws{"m.weight_scale", DType::F32, {1}, std::vector<uint8_t>(4)};
  std::memcpy(ws.bytes.data(), &two, 4);
  t.add(ws);
  QuantizedWeight p = find_layout("fp8").decode(t, "m", sq);
  EXPECT_EQ(p.act, ActQuant::FP8StaticTensor);
  EXPECT_EQ(p.input_scale, 2.0f);
  EXPECT_EQ(p.dequantize(), (std::vector<float>{2.0f, 4.0f, 1.0f, -2.0f}));
  EXPECT_THROW(find_layout("fp8").decode(t, "m", json{{"activation_scheme", "weird"}}), Error);
  EXPECT_THROW(find_layout("fp8").decode(t, "m", json{{"weight_block_size", json::array({128})}}), Error);
}

TEST(Layouts, MemoryReader) {
  MemoryTensorReader r("mem");
  r.add(EncodedTensor{"a.weight", DType::F32, {1}, std::vector<uint8_t>(4)});
  r.add(EncodedTensor{"a.bias", DType::F32, {2}, std::vector<uint8_t>(8)});
  r.add(EncodedTensor{"a.b.weight", DType::F32, {1}, std::vector<uint8_t>(4)});
  r.add(EncodedTensor{"a.bias", DType::F32, {1}, std::vector<uint8_t>(4)});  // replaces
  EXPECT_EQ(r.list().size(), 3u);
  EXPECT_EQ(r.bytes(), 12u);
  EXPECT_EQ(r.get("a.bias").info.shape, (Shape{1}));
  EXPECT_THROW(r.get("nope"), Error);
  EXPECT_EQ(module_tensor_names(r, "a"), (std::vector<std::string>{"a.weight", "a.bias"}));
  EXPECT_FALSE(is_quantized_module(r, "a"));
  EXPECT_TRUE(quantized_modules(r).empty());
}

// ---------------------------------------------------------------------------------------------
// docs/formats.md "Tensors written" table vs the encoders.

namespace {

struct DocRow {
  std::string layout, tensor, dtype, shape, when;
  int hits = 0;
};

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '`')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '`')) ++i;
  return s.substr(i);
}

std::vector<std::string> split(const std::string& s, char c) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(c, b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

std::vector<DocRow> doc_rows() {
  std::ifstream f(test::repo_root() / "docs" / "formats.md");
  std::vector<DocRow> rows;
  std::string line;
  bool in_section = false;
  while (std::getline(f, line)) {
    if (line.rfind("### ", 0) == 0) in_section = line.find("Tensors written") != std::string::npos;
    if (!in_section || line.rfind("| ", 0) != 0) continue;
    auto cells = split(line.substr(1, line.size() - 2), '|');
    if (cells.size() != 5) continue;
    DocRow r{trim(cells[0]), trim(cells[1]), trim(cells[2]), trim(cells[3]), trim(cells[4])};
    if (r.tensor.rfind("m.", 0) != 0) continue;  // header / separator
    rows.push_back(r);
  }
  return rows;
}

int64_t eval_dim(const std::string& e, const QuantizedWeight& w) {
  const int64_t pf = 32 / w.bits, ng = w.n_groups();
  const std::map<std::string, int64_t> v = {
      {"out", w.out}, {"in", w.in}, {"1", 1}, {"2", 2}, {"ng", ng},
      {"ceil(in/pf)", (w.in + pf - 1) / pf}, {"ceil(out/pf)", (w.out + pf - 1) / pf},
      {"ceil(in*b/32)", (w.in * w.bits + 31) / 32}, {"ceil(out*b/32)", (w.out * w.bits + 31) / 32},
      {"in*b/32", w.in * w.bits / 32}, {"out*b/32", w.out * w.bits / 32}, {"out/8", w.out / 8}};
  auto it = v.find(e);
  if (it == v.end()) throw std::runtime_error("docs: unknown shape expression '" + e + "'");
  return it->second;
}

bool holds(const std::string& when, const QuantizedWeight& w) {
  const bool stat = w.act == ActQuant::FP8StaticTensor || w.act == ActQuant::INT8StaticTensor;
  const std::map<std::string, bool> k = {
      {"always", true},        {"sym", w.symmetric},         {"asym", !w.symmetric},
      {"tensor", w.group == 0}, {"channel", w.group == -1},  {"group", w.group > 0},
      {"g_idx", !w.g_idx.empty()}, {"static", stat},          {"bias", !w.bias.empty()}};
  for (const std::string& term : split(when, ',')) {
    bool any = false;
    for (const std::string& alt : split(trim(term), '/')) {
      auto it = k.find(trim(alt));
      if (it == k.end()) throw std::runtime_error("docs: unknown condition '" + alt + "'");
      any = any || it->second;
    }
    if (!any) return false;
  }
  return true;
}

}  // namespace

TEST(Layouts, DocsTableMatchesEncoders) {
  std::vector<DocRow> rows = doc_rows();
  ASSERT_GE(rows.size(), 20u) << "docs/formats.md: 'Tensors written' table not found";
  using A = ActQuant;
  const QKind I = QKind::INT, F = QKind::FP8;
  std::vector<Scheme> schemes;
  for (int b : {2, 3, 4, 8})
    for (bool bias : {false, true}) {
      for (bool sym : {true, false}) {
        schemes.push_back({"pack-quantized", I, b, sym, -1, A::None, false, bias});
        schemes.push_back({"pack-quantized", I, b, sym, 32, A::None, !sym, bias});
      }
      schemes.push_back({"pack-quantized", I, b, true, 0, A::None, false, bias});
      schemes.push_back({"gptq", I, b, true, -1, A::None, false, bias});
      schemes.push_back({"gptq", I, b, true, 32, A::None, true, bias});
    }
  for (bool bias : {false, true}) {
    for (int64_t g : {0, -1, 32}) {
      for (A a : {A::None, A::INT8DynamicToken, A::INT8StaticTensor})
        schemes.push_back({"int-quantized", I, 8, true, g, a, false, bias});
      for (A a : {A::None, A::FP8StaticTensor, A::FP8DynamicToken, A::FP8DynamicTensor})
        schemes.push_back({"float-quantized", F, 8, true, g, a, false, bias});
    }
    schemes.push_back({"awq", I, 4, true, 32, A::None, false, bias});
    schemes.push_back({"awq", I, 4, false, 32, A::None, false, bias});
  }
  std::mt19937 rng(99);
  for (const Scheme& s : schemes) {
    const Layout& L = find_layout(s.layout);
    QuantizedWeight w = random_weight(s, 64, 96, rng);
    round_scales(w, L.scale_dtype);
    SCOPED_TRACE(s.layout + " bits " + std::to_string(s.bits) + " group " + std::to_string(s.group) +
                 (s.sym ? " sym" : " asym") + " act " + act_quant_name(s.act));
    ASSERT_TRUE(L.can_hold(w)) << L.why_not(w);
    std::vector<std::string> got, want;
    for (const EncodedTensor& t : L.encode("m", w))
      got.push_back(t.name + " " + dtype_traits(t.dtype).safetensors + " " + shape_str(t.shape));
    for (DocRow& r : rows) {
      if (r.layout != s.layout || !holds(r.when, w)) continue;
      ++r.hits;
      Shape shape;
      for (const std::string& d : split(r.shape.substr(1, r.shape.size() - 2), ','))
        shape.push_back(eval_dim(trim(d), w));
      want.push_back(r.tensor + " " + r.dtype + " " + shape_str(shape));
    }
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want);
  }
  for (const DocRow& r : rows)
    EXPECT_GT(r.hits, 0) << "docs row never exercised: " << r.layout << " " << r.tensor << " " << r.when;
}

// ---------------------------------------------------------------------------------------------
// Variants other tools write that llmc never writes itself.

namespace {
EncodedTensor f32_tensor(const std::string& name, Shape shape, const std::vector<float>& v) {
  EncodedTensor t{name, DType::F32, std::move(shape), std::vector<uint8_t>(v.size() * 4)};
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}
EncodedTensor i8_tensor(const std::string& name, Shape shape, const std::vector<int8_t>& v) {
  EncodedTensor t{name, DType::I8, std::move(shape), std::vector<uint8_t>(v.size())};
  std::memcpy(t.bytes.data(), v.data(), v.size());
  return t;
}
json ct_cfg(json weights, json input = nullptr) {
  return {{"quant_method", "compressed-tensors"},
          {"format", "naive-quantized"},
          {"config_groups",
           {{"group_0", {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", input}}}}}};
}

// 3/5/6/7-bit pack-quantized: written as compressed-tensors' dense stream (ceil(in·b/32) words
// per row, zero points ceil(out·b/32) rows); the older 32/b-codes-per-word packing (llmc before,
// compressed-tensors before 2026) still reads, told apart by the tensor shape.
TEST(Layouts, PackQuantizedDenseStreamAndOlderFixedPacking) {
  const Layout& P = find_layout("pack-quantized");
  for (int b : {3, 5, 6, 7}) {
    SCOPED_TRACE(b);
    const int lo = -(1 << (b - 1)), n = 1 << b;
    QuantizedWeight w = sym_weight(b, 40, 64, 32, [&](int64_t o, int64_t i) { return lo + int((o * 7 + i * 5) % n); });
    w.symmetric = false;  // asymmetric: zero points packed along out too
    w.qu.resize(w.q8.size());
    for (size_t k = 0; k < w.q8.size(); ++k) w.qu[k] = uint8_t(w.q8[k] - lo);
    w.q8.clear();
    w.zeros.resize(size_t(40 * 2));
    for (size_t k = 0; k < w.zeros.size(); ++k) w.zeros[k] = int32_t((k * 3) % n);
    std::vector<EncodedTensor> t = P.encode("m", w);
    const EncodedTensor& wp = find(t, "m.weight_packed");
    const EncodedTensor& zp = find(t, "m.weight_zero_point");
    ASSERT_EQ(wp.shape, (Shape{40, 64 * b / 32}));
    ASSERT_EQ(zp.shape, (Shape{(40 * b + 31) / 32, 2}));
    // Row 1 is the stream of its codes, element k at bit k·b.
    std::vector<int32_t> row(w.qu.begin() + 64, w.qu.begin() + 128);
    const std::vector<uint32_t> words = words_of(wp);
    EXPECT_EQ(std::vector<uint32_t>(words.begin() + 2 * b, words.begin() + 4 * b), pack(row, b, PackScheme::Stream));
    QuantConfigSpec spec;
    spec.scheme = w;
    const json qc = P.quantization_config(spec);
    EXPECT_EQ(P.decode(reader_of(t), "m", qc).dequantize(), w.dequantize());
    // The same weight packed the older way: [40, ceil(64 / (32/b))], zeros [ceil(40 / (32/b)), 2].
    const int64_t per = 32 / b, fw = (64 + per - 1) / per, fz = (40 + per - 1) / per;
    std::vector<uint32_t> old_w(size_t(40 * fw)), old_z(size_t(fz * 2));
    for (int64_t o = 0; o < 40; ++o) {
      std::vector<int32_t> r(w.qu.begin() + o * 64, w.qu.begin() + (o + 1) * 64);
      pack_codes(r.data(), 1, 64, b, PackScheme::Fixed, old_w.data() + o * fw, 1);
    }
    for (int64_t g = 0; g < 2; ++g) {
      std::vector<int32_t> c(40);
      for (int64_t o = 0; o < 40; ++o) c[size_t(o)] = w.zeros[size_t(o * 2 + g)];
      pack_codes(c.data(), 1, 40, b, PackScheme::Fixed, old_z.data() + g, 2);
    }
    std::vector<EncodedTensor> old = t;
    for (EncodedTensor& e : old) {
      if (e.name == "m.weight_packed") e = EncodedTensor{e.name, DType::I32, {40, fw}, {}};
      else if (e.name == "m.weight_zero_point") e = EncodedTensor{e.name, DType::I32, {fz, 2}, {}};
      else continue;
      const std::vector<uint32_t>& src = e.name == "m.weight_packed" ? old_w : old_z;
      e.bytes.resize(src.size() * 4);
      std::memcpy(e.bytes.data(), src.data(), e.bytes.size());
    }
    ASSERT_NE(fw, 64 * b / 32);  // the shapes tell the two apart
    EXPECT_EQ(P.decode(reader_of(old), "m", qc).dequantize(), w.dequantize());
    // A width fitting neither is an error naming the tensor.
    std::vector<EncodedTensor> bad = t;
    for (EncodedTensor& e : bad)
      if (e.name == "m.weight_packed") e = EncodedTensor{e.name, DType::I32, {40, 1}, std::vector<uint8_t>(160)};
    EXPECT_NE(error_of([&] { P.decode(reader_of(bad), "m", qc); }).find("m.weight_packed"), std::string::npos);
  }
}
}  // namespace

TEST(Layouts, ReadsOtherToolsVariants) {
  const Layout& N = find_layout("naive-quantized");
  // int8 asymmetric, per channel, signed codes and signed zero points (compressed-tensors).
  {
    MemoryTensorReader r("x");
    r.add(i8_tensor("m.weight", {2, 2}, {-128, 10, 0, 127}));
    r.add(i8_tensor("m.weight_zero_point", {2, 1}, {-100, 5}));
    r.add(f32_tensor("m.weight_scale", {2, 1}, {0.5f, 2.0f}));
    const json qc = ct_cfg({{"num_bits", 8}, {"type", "int"}, {"symmetric", false}, {"strategy", "channel"}});
    QuantizedWeight w = N.decode(r, "m", qc);
    EXPECT_FALSE(w.symmetric);
    EXPECT_EQ(w.dequantize(), (std::vector<float>{-14.0f, 55.0f, -10.0f, 244.0f}));
  }
  // pack-quantized per-tensor asymmetric: zero point unpacked (int8 [1]).
  {
    MemoryTensorReader r("x");
    r.add(EncodedTensor{"m.weight_packed", DType::I32, {1, 1}, {0x10, 0x32, 0, 0}});  // codes 0,1,2,3
    r.add(f32_tensor("m.weight_scale", {1}, {1.0f}));
    EncodedTensor sh{"m.weight_shape", DType::I64, {2}, std::vector<uint8_t>(16)};
    const int64_t dims[2] = {1, 4};
    std::memcpy(sh.bytes.data(), dims, 16);
    r.add(sh);
    r.add(i8_tensor("m.weight_zero_point", {1}, {-7}));  // unsigned zero 1
    const json qc = ct_cfg({{"num_bits", 4}, {"type", "int"}, {"symmetric", false}, {"strategy", "tensor"}});
    EXPECT_EQ(N.decode(r, "m", qc).dequantize(), (std::vector<float>{-1.0f, 0.0f, 1.0f, 2.0f}));
  }
  // fp8 block strategy [2, 4] (list and "2x4" spelling), dynamic per-token activations.
  {
    MemoryTensorReader r("x");
    r.add(EncodedTensor{"m.weight", DType::F8_E4M3, {3, 5}, std::vector<uint8_t>(15, 0x38)});  // 1.0
    r.add(f32_tensor("m.weight_scale", {2, 2}, {1.0f, 2.0f, 3.0f, 4.0f}));
    for (json bs : {json::array({2, 4}), json("2x4")}) {
      const json qc = ct_cfg({{"num_bits", 8}, {"type", "float"}, {"strategy", "block"}, {"block_structure", bs}},
                             {{"num_bits", 8}, {"type", "float"}, {"strategy", "token"}, {"dynamic", true}});
      QuantizedWeight w = N.decode(r, "m", qc);
      EXPECT_EQ(w.act, ActQuant::FP8DynamicToken);
      EXPECT_EQ(w.dequantize(), (std::vector<float>{1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4}));
    }
    json bad = ct_cfg({{"num_bits", 8}, {"type", "float"}, {"strategy", "block"}});
    EXPECT_NE(error_of([&] { N.decode(r, "m", bad); }).find("block_structure"), std::string::npos);
    bad = ct_cfg({{"num_bits", 8}, {"type", "nf4"}});
    EXPECT_THROW(N.decode(r, "m", bad), Error);
    bad = ct_cfg({{"num_bits", 8}, {"type", "float"}, {"strategy", "group"}});
    EXPECT_THROW(N.decode(r, "m", bad), Error);  // group without group_size
    bad = ct_cfg({{"num_bits", 8}, {"type", "float"}}, {{"num_bits", 8}, {"type", "float"}, {"dynamic", "local"}});
    EXPECT_THROW(N.decode(r, "m", bad), Error);
    bad = ct_cfg({{"num_bits", 8}, {"type", "float"}, {"symmetric", "yes"}});
    EXPECT_THROW(N.decode(r, "m", bad), Error);
    bad = ct_cfg({{"num_bits", 4}, {"type", "float"}});
    EXPECT_THROW(N.decode(r, "m", bad), Error);
    bad = ct_cfg({{"num_bits", 8}, {"type", "int"}});  // int config, fp8 tensor
    EXPECT_NE(error_of([&] { N.decode(r, "m", bad); }).find("has dtype F8_E4M3, expected I8"), std::string::npos);
    bad = ct_cfg({{"num_bits", 8}, {"type", "float"}});
    bad["config_groups"]["group_0"]["targets"] = {"re:(unclosed"};
    EXPECT_NE(error_of([&] { N.decode(r, "m", bad); }).find("invalid target regex"), std::string::npos);
  }
  // vLLM fp8 with a per-channel weight_scale [out].
  {
    MemoryTensorReader r("x");
    r.add(EncodedTensor{"m.weight", DType::F8_E4M3, {2, 1}, {0x38, 0x38}});
    r.add(f32_tensor("m.weight_scale", {2}, {3.0f, 5.0f}));
    QuantizedWeight w = find_layout("fp8").decode(r, "m", json{{"quant_method", "fp8"}});
    EXPECT_EQ(w.group, -1);
    EXPECT_EQ(w.act, ActQuant::FP8DynamicTensor);
    EXPECT_EQ(w.dequantize(), (std::vector<float>{3.0f, 5.0f}));
    r.add(f32_tensor("m.weight_scale", {3}, {3.0f, 5.0f, 1.0f}));
    EXPECT_THROW(find_layout("fp8").decode(r, "m", json{{"quant_method", "fp8"}}), Error);
  }
  // AWQ config variants and errors.
  {
    auto w = sym_weight(4, 8, 32, 32, [](int64_t, int64_t i) { return int(i % 16) - 8; });
    MemoryTensorReader r = reader_of(find_layout("awq").encode("m", w));
    const Layout& A = find_layout("awq");
    EXPECT_EQ(A.decode(r, "m", json{{"w_bit", 4}, {"q_group_size", 32}, {"version", "GEMM"}}).dequantize(),
              w.dequantize());
    EXPECT_THROW(A.decode(r, "m", json{{"bits", 8}, {"group_size", 32}}), Error);
    EXPECT_THROW(A.decode(r, "m", json{{"bits", 4}, {"group_size", 0}}), Error);
    EXPECT_THROW(A.decode(r, "m", json{{"bits", 4}, {"group_size", 32}, {"version", "gemv"}}), Error);
    EXPECT_THROW(A.decode(r, "m", json{{"bits", 4}, {"group_size", 32}, {"zero_point", false}}), Error);
    EXPECT_THROW(A.decode(r, "m", json{{"bits", 4}, {"group_size", 64}}), Error);  // shapes disagree
    EXPECT_THROW(A.decode(r, "m", json{{"bits", 4}, {"group_size", 32}}, 16, 32), Error);
  }
}

// ---- vLLM loadability (the table's vllm column; docs/formats.md names the vLLM code) -------

namespace {

QuantizedWeight scheme(QKind kind, int bits, bool sym, int64_t group, ActQuant act = ActQuant::None,
                       int64_t in = 256) {
  QuantizedWeight w;
  w.kind = kind;
  w.bits = bits;
  w.symmetric = sym;
  w.group = group;
  w.act = act;
  w.in = in;
  w.out = 64;
  return w;
}

}  // namespace

TEST(Layouts, VllmLoadabilityFromTheTable) {
  const QKind I = QKind::INT, F = QKind::FP8;
  using A = ActQuant;
  struct Case {
    const char* layout;
    QuantizedWeight w;
    const char* why;  // "" = served, else a substring of the reason
  };
  const Case cases[] = {
      // compressed-tensors W4A16 / W8A16 (Marlin: uint4b8, uint8b128, uint4 with zero points)
      {"pack-quantized", scheme(I, 4, true, 128), ""},
      {"pack-quantized", scheme(I, 4, false, 32), ""},
      {"pack-quantized", scheme(I, 8, true, -1), ""},
      {"pack-quantized", scheme(I, 8, true, 64), ""},
      {"pack-quantized", scheme(I, 8, false, 128), "8-bit asymmetric"},
      {"pack-quantized", scheme(I, 2, false, 64), "2-bit asymmetric"},
      {"pack-quantized", scheme(I, 3, true, 128), "3-bit symmetric"},
      {"pack-quantized", scheme(I, 5, true, 128), "5-bit"},
      {"pack-quantized", scheme(I, 6, true, 128), "6-bit"},
      {"pack-quantized", scheme(I, 7, true, 128), "7-bit"},
      {"pack-quantized", scheme(I, 4, true, 16), "group size 16 (served: -1, 32, 64, 128)"},
      {"pack-quantized", scheme(I, 4, true, 0), "per-tensor scales"},
      {"pack-quantized", scheme(I, 4, true, 128, A::None, 192), "does not divide in_features 192"},
      {"compressed-tensors", scheme(I, 4, false, 128), ""},
      {"compressed-tensors", scheme(I, 3, false, 128), "3-bit asymmetric"},
      {"compressed-tensors", scheme(F, 8, true, -1, A::FP8DynamicToken), ""},
      // W8A8 int8 / fp8
      {"int-quantized", scheme(I, 8, true, -1, A::INT8DynamicToken), ""},
      {"int-quantized", scheme(I, 8, true, 0, A::INT8StaticTensor), ""},
      {"int-quantized", scheme(I, 8, true, -1), "activation scheme none"},
      {"float-quantized", scheme(F, 8, true, 0, A::FP8StaticTensor), ""},
      {"float-quantized", scheme(F, 8, true, -1, A::FP8DynamicTensor), ""},
      {"float-quantized", scheme(F, 8, true, -1), ""},
      {"float-quantized", scheme(F, 8, true, 128, A::FP8DynamicToken), "group size 128"},
      {"float-quantized", scheme(I, 8, true, -1, A::FP8DynamicToken), "takes fp8 weights"},
      // GPTQ (gptq_marlin for 4/8 bits and groups -1/32/64/128, else the float16 GPTQ kernels)
      {"gptq", scheme(I, 4, true, 128), ""},
      {"gptq", scheme(I, 2, true, 64), ""},
      {"gptq", scheme(I, 3, true, 128), ""},
      {"gptq", scheme(I, 8, true, -1), ""},
      {"gptq", scheme(I, 4, true, 16), ""},
      {"gptq", scheme(I, 4, true, 0), "per-tensor scales"},
      {"gptq", scheme(I, 4, true, 96), "does not divide in_features 256"},
      // AWQ
      {"awq", scheme(I, 4, false, 128), ""},
      {"awq", scheme(I, 4, true, 128), ""},  // stored with zero points 8
      {"fp8", scheme(F, 8, true, 0, A::FP8StaticTensor), ""},
  };
  for (const Case& c : cases) {
    const std::string why = find_layout(c.layout).vllm_why_not(c.w);
    if (!*c.why) {
      EXPECT_EQ(why, "") << c.layout << " " << c.w.bits;
    } else {
      EXPECT_NE(why.find(c.why), std::string::npos) << c.layout << ": " << why;
      EXPECT_NE(why.find("from vLLM "), std::string::npos) << why;  // names the vLLM code
    }
  }
  EXPECT_NE(find_layout("pack-quantized").vllm_why_not(scheme(I, 3, true, 128)).find("WNA16_SUPPORTED_TYPES_MAP"),
            std::string::npos);
  EXPECT_NE(find_layout("compressed-tensors").vllm_why_not(scheme(I, 4, true, 128, A::FP8DynamicToken)),
            "");  // no compressed-tensors format holds int4 weights with fp8 activations
}

// --layout defaults are choices vLLM serves, wherever any of the method's layouts is.
TEST(Layouts, DefaultLayoutsAreServedByVllmWhenAnyLayoutIs) {
  for (const char* name : {"int8", "int2", "int4_gptq", "int4_awq"}) {
    const MethodInfo& m = find_method(name);
    for (int bits : m.allowed_bits)
      for (bool sym : {true, false}) {
        if (!m.symmetry_configurable && sym != m.default_symmetric) continue;
        QuantOverrides o;
        o.bits = bits;
        if (m.symmetry_configurable) o.symmetric = sym;  // --sym is refused where fixed
        const QuantSpec s = resolve_spec(m, o);
        const QuantizedWeight w = scheme(QKind::INT, bits, sym, s.group);
        bool any = false;
        for (const std::string& l : m.layouts)
          any |= find_layout(l).can_hold(w) && find_layout(l).vllm_why_not(w).empty();
        const std::string why = find_layout(s.layout).vllm_why_not(w);
        if (any) EXPECT_EQ(why, "") << name << " " << bits << (sym ? " sym -> " : " asym -> ") << s.layout;
        else EXPECT_NE(why, "") << name << " " << bits;
      }
  }
}

TEST(Layouts, VllmLoadabilityOfACheckpoint) {
  const Layout& P = find_layout("pack-quantized");
  auto make = [&](int bits, int64_t in, int64_t in2 = 96) {
    QuantizedWeight w = sym_weight(bits, 8, in, 32, [](int64_t o, int64_t i) { return int((o + i) % 3) - 1; });
    std::vector<EncodedTensor> t = P.encode("model.layers.0.mlp.up_proj", w);
    QuantizedWeight w2 = sym_weight(bits, 8, in2, 32, [](int64_t, int64_t) { return 1; });
    for (EncodedTensor& e : P.encode("model.layers.0.mlp.down_proj", w2)) t.push_back(std::move(e));
    QuantConfigSpec spec;
    spec.scheme = w;
    return std::pair{reader_of(std::move(t)), json{{"quantization_config", P.quantization_config(spec)}}};
  };
  {
    auto [r, cfg] = make(4, 64);
    EXPECT_EQ(vllm_loadability(r, cfg), (json{{"loadable", true}, {"reason", ""}}));
    EXPECT_EQ(vllm_loadability(r, json{{"model_type", "qwen3"}})["loadable"], true);  // dense
    cfg["quantization_config"]["quant_method"] = "bitsandbytes";
    const json v = vllm_loadability(r, cfg);
    EXPECT_EQ(v["loadable"], false);
    EXPECT_NE(v["reason"].get<std::string>().find("bitsandbytes"), std::string::npos);
  }
  {
    auto [r, cfg] = make(3, 64);
    const json v = vllm_loadability(r, cfg);
    EXPECT_EQ(v["loadable"], false);
    EXPECT_NE(v["reason"].get<std::string>().find("3-bit"), std::string::npos) << v.dump();
  }
  {
    auto [r, cfg] = make(4, 64, 80);  // the second module's in_features is not a multiple of 32
    const json v = vllm_loadability(r, cfg);
    EXPECT_EQ(v["loadable"], false);
    EXPECT_NE(v["reason"].get<std::string>().find("down_proj: group size 32 does not divide in_features 80"),
              std::string::npos) << v.dump();
  }
}
