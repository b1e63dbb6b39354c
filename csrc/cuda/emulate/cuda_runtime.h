// Host emulation of the small part of the CUDA runtime that csrc/cuda/engine.cu uses, so that the
// kernels can be compiled by a plain C++ compiler and run on the CPU (blocks one after another).
// Used by scripts/cuda_emulate_check.sh to test the kernels' indexing and logic against the CPU
// engine on machines without a GPU. With RASP_EMU_THREADS > 1 (C++20) each block runs that many
// OS threads meeting at a std::barrier for __syncthreads(), so that ThreadSanitizer can report
// missing barriers (shared-memory races); with 1 thread per block races cannot show.
#pragma once

#ifndef RASP_EMU_THREADS
#define RASP_EMU_THREADS 1
#endif
#if RASP_EMU_THREADS > 1
#include <barrier>
#include <thread>
#endif

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#define RASP_CUDA_EMULATE 1
#define __global__
#define __device__
#define __host__
#define __shared__ static  // one variable for all threads of the (one running) block
#define __launch_bounds__(...)

struct dim3_emu {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local dim3_emu threadIdx;
inline dim3_emu blockIdx, blockDim, gridDim;
#if RASP_EMU_THREADS > 1
inline std::barrier<>* emu_barrier = nullptr;
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
#else
inline void __syncthreads() {}
#endif
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
struct int2 {
  int x, y;
};
inline int2 make_int2(int x, int y) { return int2{x, y}; }
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 smem_f4[1 << 18];  // 4 MiB of "shared memory"

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
struct cudaDeviceProp {
  char name[256];
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
};
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::strcpy(p->name, "CPU emulation");
  p->multiProcessorCount = 3;
  // small, so that the emulation also takes the global-memory workspace path for larger models
  p->sharedMemPerBlockOptin = 100 * 1024;
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t n) {
  void* q = std::malloc(n);
  if (q) std::memset(q, 0xff, n);  // garbage (NaN floats, -1 ints): reads of unwritten memory show up
  *p = static_cast<T*>(q);
  return q ? cudaSuccess : 2;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy2D(void* d, size_t dpitch, const void* s, size_t spitch, size_t width, size_t height,
                                cudaMemcpyKind) {
  for (size_t r = 0; r < height; ++r)
    std::memcpy(static_cast<char*>(d) + r * dpitch, static_cast<const char*>(s) + r * spitch, width);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* d, int v, size_t n) {
  std::memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  std::memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}
template <class F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t) {
  *n = 2;
  return cudaSuccess;
}
template <class F, class... A>
inline void rasp_emu_launch(F f, unsigned grid, unsigned block, size_t smem, A... args) {
  if (smem > sizeof(smem_f4)) std::abort();
  const unsigned nt = block < RASP_EMU_THREADS ? block : RASP_EMU_THREADS;
  gridDim.x = grid;
  blockDim.x = nt;
#if RASP_EMU_THREADS > 1
  std::barrier<> bar(nt);
  emu_barrier = &bar;
#endif
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::memset(smem_f4, 0xff, smem);
#if RASP_EMU_THREADS > 1
    std::vector<std::thread> team;
    for (unsigned t = 0; t < nt; ++t)
      team.emplace_back([&, t] {
        threadIdx.x = t;
        f(args...);
      });
    for (auto& th : team) th.join();
#else
    threadIdx.x = 0;
    f(args...);
#endif
  }
}
