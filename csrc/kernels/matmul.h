// Dense float32 matmul on the CPU: C[M,N] = A[M,K] @ B[K,N], all row-major and contiguous.
#pragma once

#include <cstdint>

namespace rasp {

// Threads over row blocks of C; `threads` <= 0 means the default.
void matmul_f32(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n, int threads);

}  // namespace rasp
