#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "formats/tensor_store.h"

namespace llmc {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

std::vector<float> TensorRef::to_f32() const {
  const int64_t n = info.numel();
  LLMC_CHECK(uint64_t(n) * dtype_size(info.dtype) == info.nbytes, info.name);
  std::vector<float> out;
  assign_zeroed(out, size_t(n));
  llmc::to_f32(info.dtype, data, out.data(), size_t(n));
  return out;
}

}  // namespace llmc
