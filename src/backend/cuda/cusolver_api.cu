// backend/cuda/cusolver_api.cu — dlopen'ed cuSOLVER (backend/cuda/cusolver_api.h).
#include "backend/cuda/cusolver_api.h"

#include <dlfcn.h>

#include <string>

#include "core/error.h"

namespace llmc::backend::cuda {

namespace {
template <typename F>
void load(void* lib, const std::string& lib_name, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!*fn) fail("CUDA backend: ", lib_name, " has no symbol ", name);
}
}  // namespace

const CusolverApi& cusolver() {
  static const CusolverApi api = [] {
    const std::string name = "libcusolver.so." + std::to_string(CUSOLVER_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef LLMC_CUDA_LIBRARY_DIR
    if (!lib) lib = dlopen((std::string(LLMC_CUDA_LIBRARY_DIR) + "/" + name).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
    if (!lib) {
      const char* why = dlerror();
      fail("CUDA backend: cannot load ", name, " (", why ? why : "not found",
           "); install cuSOLVER or use --device cpu");
    }
    CusolverApi a{};
    load(lib, name, "cusolverDnCreate", &a.create);
    load(lib, name, "cusolverDnSetStream", &a.set_stream);
    load(lib, name, "cusolverDnDpotrf_bufferSize", &a.dpotrf_buffer_size);
    load(lib, name, "cusolverDnDpotrf", &a.dpotrf);
    load(lib, name, "cusolverDnDpotri_bufferSize", &a.dpotri_buffer_size);
    load(lib, name, "cusolverDnDpotri", &a.dpotri);
    load(lib, name, "cusolverDnDpotrs", &a.dpotrs);
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
