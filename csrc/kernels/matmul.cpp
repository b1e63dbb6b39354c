#include "kernels/matmul.h"

#include <algorithm>
#include <cstring>

#include "common/parallel.h"

namespace rasp {

namespace {
constexpr int64_t kRowBlock = 16;   // rows of C per task
constexpr int64_t kKBlock = 256;    // depth tile: keeps a panel of B in cache
constexpr int64_t kNBlock = 512;    // column tile
}  // namespace

void matmul_f32(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n, int threads) {
  if (m <= 0 || n <= 0) return;
  std::memset(c, 0, sizeof(float) * static_cast<size_t>(m * n));
  if (k <= 0) return;
  const int64_t row_blocks = (m + kRowBlock - 1) / kRowBlock;
  // Small problems are not worth a thread fork.
  const int use_threads = (m * n * k < (int64_t{1} << 16)) ? 1 : threads;
  parallel_for(row_blocks, use_threads, [&](int64_t rb) {
    const int64_t i0 = rb * kRowBlock, i1 = std::min(m, i0 + kRowBlock);
    for (int64_t j0 = 0; j0 < n; j0 += kNBlock) {
      const int64_t j1 = std::min(n, j0 + kNBlock);
      for (int64_t p0 = 0; p0 < k; p0 += kKBlock) {
        const int64_t p1 = std::min(k, p0 + kKBlock);
        for (int64_t i = i0; i < i1; ++i) {
          float* crow = c + i * n;
          const float* arow = a + i * k;
          for (int64_t p = p0; p < p1; ++p) {
            const float av = arow[p];
            if (av == 0.0f) continue;  // compiled weights are mostly zeros
            const float* brow = b + p * n;
            for (int64_t j = j0; j < j1; ++j) crow[j] += av * brow[j];
          }
        }
      }
    }
  });
}

}  // namespace rasp
