// backend/cuda/cusolver_api.h — cuSOLVER (dense) loaded on first use, like cuBLAS
// (backend/cuda/cuda_context.cuh): dlopen of libcusolver.so.<major>, not linked, so CPU-only
// runs never map it. Internal to src/backend/cuda.
#pragma once
#include <cusolverDn.h>

namespace llmc::backend::cuda {

struct CusolverApi {
  decltype(&cusolverDnCreate) create;
  decltype(&cusolverDnSetStream) set_stream;
  decltype(&cusolverDnDpotrf_bufferSize) dpotrf_buffer_size;
  decltype(&cusolverDnDpotrf) dpotrf;
  decltype(&cusolverDnDpotri_bufferSize) dpotri_buffer_size;
  decltype(&cusolverDnDpotri) dpotri;
  decltype(&cusolverDnDpotrs) dpotrs;
};
// Throws llmc::Error naming the library when it cannot be loaded or lacks a symbol.
const CusolverApi& cusolver();
// The process-wide handle (created on first use; callers hold ctx().mu).
cusolverDnHandle_t cusolver_handle();
// Throws llmc::Error "CUDA error: cuSOLVER status N in <what>" unless s is SUCCESS.
void check_cusolver(cusolverStatus_t s, const char* what);

}  // namespace llmc::backend::cuda
