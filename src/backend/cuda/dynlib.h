// backend/cuda/dynlib.h — the CUDA math libraries (cuBLAS, cuSOLVER) are dlopen'ed at first use,
// so llmc runs (on the CPU) where they are absent. One opener and one symbol loader for both.
#pragma once
#include <dlfcn.h>

#include <string>

#include "core/error.h"

namespace llmc::backend::cuda {

// dlopen(soname), then LLMC_CUDA_LIBRARY_DIR/soname when the build names that folder; failure
// -> llmc::Error "CUDA backend: cannot load <soname> (<why>); install <what> or use --device cpu".
void* open_cuda_library(const std::string& soname, const char* what);

// *fn = the symbol `name` of `lib`; missing -> llmc::Error naming the library and the symbol.
template <typename F>
void load_symbol(void* lib, const std::string& lib_name, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!*fn) fail("CUDA backend: ", lib_name, " has no symbol ", name);
}

}  // namespace llmc::backend::cuda
