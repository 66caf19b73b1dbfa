// backend/cuda/reduce_device.cuh — block and warp reductions shared by the CUDA kernels (one
// copy; the grid rules are in grid_device.cuh). Internal to src/backend/cuda.
#pragma once
#include <cstdint>

namespace llmc::backend::cuda {

// Sum of v over the thread block, in fp64, returned to every thread (blockDim.x a multiple of
// 32, <= 1024; every thread of the block must call it).
inline __device__ double block_sum(double v) {
  __shared__ double red[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const double r = red[0];
  __syncthreads();
  return r;
}

// [lo, hi] = [min(0, x_i), max(0, x_i)] over x_i = at(i), i < len, by one warp (lane = its lane);
// every lane gets the result. quant/grid.cpp's ranges include 0.
template <typename At>
inline __device__ void warp_range(int64_t len, int lane, At at, float* lo, float* hi) {
  float a = 0.0f, b = 0.0f;
  for (int64_t i = lane; i < len; i += 32) {
    const float v = at(i);
    a = fminf(a, v);
    b = fmaxf(b, v);
  }
  for (int m = 16; m > 0; m >>= 1) {
    a = fminf(a, __shfl_xor_sync(0xffffffffu, a, m));
    b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, m));
  }
  *lo = a;
  *hi = b;
}

}  // namespace llmc::backend::cuda
