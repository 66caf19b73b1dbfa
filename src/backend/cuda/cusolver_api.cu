// backend/cuda/cusolver_api.cu — dlopen'ed cuSOLVER (backend/cuda/cusolver_api.h).
#include "backend/cuda/cusolver_api.h"

#include <string>

#include "backend/cuda/dynlib.h"
#include "core/error.h"

namespace llmc::backend::cuda {

const CusolverApi& cusolver() {
  static const CusolverApi api = [] {
    const std::string name = "libcusolver.so." + std::to_string(CUSOLVER_VER_MAJOR);
    void* lib = open_cuda_library(name, "cuSOLVER");
    CusolverApi a{};
    load_symbol(lib, name, "cusolverDnCreate", &a.create);
    load_symbol(lib, name, "cusolverDnSetStream", &a.set_stream);
    load_symbol(lib, name, "cusolverDnDpotrf_bufferSize", &a.dpotrf_buffer_size);
    load_symbol(lib, name, "cusolverDnDpotrf", &a.dpotrf);
    load_symbol(lib, name, "cusolverDnDpotri_bufferSize", &a.dpotri_buffer_size);
    load_symbol(lib, name, "cusolverDnDpotri", &a.dpotri);
    load_symbol(lib, name, "cusolverDnDpotrs", &a.dpotrs);
    return a;
  }();
  return api;
}

void check_cusolver(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS) fail("CUDA error: cuSOLVER status ", int(s), " in ", what);
}

cusolverDnHandle_t cusolver_handle() {
  static cusolverDnHandle_t h = [] {
    cusolverDnHandle_t x = nullptr;
    check_cusolver(cusolver().create(&x), "cusolverDnCreate");
    return x;
  }();
  return h;
}

}  // namespace llmc::backend::cuda
