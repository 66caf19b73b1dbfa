// fuzz/layout_input.h — the input format of the checkpoint-layout fuzz targets
// (fuzz_layout.cpp), written by make_seeds.cpp and parsed by parse_layout_input():
//   u16 LE n | n bytes: the quantization_config JSON
//   then tensors until the input ends:
//     u8 k | k bytes: name suffix (the tensor is "m.<suffix>") | u8 dtype (DType index) |
//     u8 ndim (<= 3) | ndim x u16 LE dims | the tensor's bytes (missing bytes read as zero)
// A tensor of more than 2^18 elements ends the input (keeps each run fast).
#pragma once
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "quant/layouts.h"

namespace llmc::fuzz {

struct LayoutInput {
  nlohmann::json qconfig;  // discarded when not valid JSON
  std::vector<EncodedTensor> tensors;
};

inline LayoutInput parse_layout_input(const uint8_t* p, size_t n) {
  LayoutInput in;
  size_t pos = 0;
  auto take = [&](size_t k) {
    const size_t got = std::min(k, n - pos);
    const uint8_t* at = p + pos;
    pos += got;
    return std::pair<const uint8_t*, size_t>(at, got);
  };
  auto u8 = [&]() -> int { return pos < n ? p[pos++] : -1; };
  if (n < 2) return in;
  const size_t jl = size_t(p[0]) | size_t(p[1]) << 8;
  pos = 2;
  const auto [jp, jn] = take(jl);
  in.qconfig = nlohmann::json::parse(jp, jp + jn, nullptr, false);
  while (pos < n) {
    const int k = u8();
    if (k < 0) break;
    const auto [np, nn] = take(size_t(k));
    const int dt = u8(), nd = u8();
    if (dt < 0 || nd < 0) break;
    EncodedTensor t;
    t.name = "m." + std::string(reinterpret_cast<const char*>(np), nn);
    t.dtype = DType(dt % kNumDTypes);
    uint64_t numel = 1;
    for (int d = 0; d < nd % 4; ++d) {
      const int lo = u8(), hi = u8();
      if (lo < 0 || hi < 0) return in;
      const int64_t dim = lo | hi << 8;
      t.shape.push_back(dim);
      numel *= uint64_t(dim);
      if (numel > (1u << 18)) return in;
    }
    const size_t bytes = size_t(numel) * dtype_size(t.dtype);
    t.bytes.assign(bytes, 0);
    const auto [bp, bn] = take(bytes);
    if (bn) std::memcpy(t.bytes.data(), bp, bn);
    in.tensors.push_back(std::move(t));
  }
  return in;
}

// The inverse, for seeds.
inline std::string serialize_layout_input(const nlohmann::json& qconfig, const std::vector<EncodedTensor>& ts,
                                          const std::string& strip_prefix) {
  std::string out;
  const std::string j = qconfig.dump();
  out.push_back(char(j.size() & 0xff));
  out.push_back(char(j.size() >> 8));
  out += j;
  for (const auto& t : ts) {
    const std::string suffix = t.name.substr(strip_prefix.size() + 1);
    out.push_back(char(suffix.size()));
    out += suffix;
    out.push_back(char(int(t.dtype)));
    out.push_back(char(t.shape.size()));
    for (int64_t d : t.shape) {
      out.push_back(char(d & 0xff));
      out.push_back(char((d >> 8) & 0xff));
    }
    out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
  return out;
}

}  // namespace llmc::fuzz
