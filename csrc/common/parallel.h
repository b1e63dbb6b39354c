// parallel_for: the engine's one threading primitive. OpenMP when the build found it, else std::thread.
// No Python, no allocation per item; `fn(i)` must be safe to call concurrently for distinct i.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#ifdef RASP_HAVE_OPENMP
#include <omp.h>
#endif

namespace rasp {

// Threads to use when the caller says 0 ("pick for me").
inline int default_threads() {
#ifdef RASP_HAVE_OPENMP
  return std::max(1, omp_get_max_threads());
#else
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
#endif
}

inline int resolve_threads(int threads) { return threads > 0 ? threads : default_threads(); }

// Calls fn(i) for i in [0, n) on up to `threads` threads with dynamic scheduling.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  int t = static_cast<int>(std::min<int64_t>(resolve_threads(threads), n));
  if (t <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#ifdef RASP_HAVE_OPENMP
#pragma omp parallel for num_threads(t) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
#else
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (int k = 1; k < t; ++k) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
#endif
}

// Like parallel_for but also passes the worker index in [0, threads): lets callers give each
// worker its own preallocated scratch buffer.
template <class Fn>
void parallel_for_worker(int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  int t = static_cast<int>(std::min<int64_t>(resolve_threads(threads), n));
  if (t <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
#ifdef RASP_HAVE_OPENMP
#pragma omp parallel num_threads(t)
  {
    int w = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) fn(i, w);
  }
#else
  std::atomic<int64_t> next{0};
  auto work = [&](int w) {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i, w);
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (int k = 1; k < t; ++k) pool.emplace_back(work, k);
  work(0);
  for (auto& th : pool) th.join();
#endif
}

// Effective worker count parallel_for_worker will use for n items (size scratch arrays with it).
inline int worker_count(int64_t n, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(resolve_threads(threads), n)));
}

}  // namespace rasp
