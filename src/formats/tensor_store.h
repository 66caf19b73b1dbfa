// formats/tensor_store.h — the format-neutral view of a checkpoint's tensors.
//
// Contracts:
//  * TensorReader lists tensors in file order and returns each one's raw little-endian bytes.
//    get() throws llmc::Error naming the tensor and file when it is absent or unreadable.
//    A TensorRef keeps its bytes alive by itself (zero-copy mmap views for safetensors; an
//    owned buffer for formats that must decode), so it may outlive nothing but the reader.
//  * TensorWriter accepts tensors one at a time, in any order, and never holds more than the
//    tensor being written plus a bounded buffer; finish() completes the files. Writers write
//    to the paths they are given; atomic replacement is the caller's job (core/fs.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace llmc {

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[8192, 128]"

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t nbytes = 0;
  int64_t numel() const { return shape_numel(shape); }
};

struct TensorRef {
  TensorInfo info;
  const uint8_t* data = nullptr;
  std::shared_ptr<const void> keepalive;  // owns `data` when the reader had to decode
  // Copies to float32 (any dtype), multithreaded for large tensors.
  std::vector<float> to_f32() const;
};

class TensorReader {
 public:
  virtual ~TensorReader() = default;
  virtual const std::vector<TensorInfo>& list() const = 0;
  virtual bool has(const std::string& name) const = 0;
  virtual TensorRef get(const std::string& name) const = 0;
  // Human-readable origin used in error messages, e.g. the file path.
  virtual std::string origin() const = 0;
};

class TensorWriter {
 public:
  virtual ~TensorWriter() = default;
  virtual void add(const std::string& name, DType dtype, const Shape& shape, const void* data,
                   uint64_t nbytes) = 0;
  virtual void finish() = 0;
};

}  // namespace llmc
