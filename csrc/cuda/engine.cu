// CUDA backend: one fused kernel runs whole sequences. Each thread block takes (patch set, sequence)
// items in a grid-stride loop and keeps the residual stream and every intermediate of one sequence
// in shared memory (or, for models too large for it, in a per-block global workspace: the code is
// the same, only the scratch pointer differs). Weights stay in global memory, read through the
// read-only cache; each matrix carries the list of its nonzero rows, so the mostly-zero compiled
// weights cost only their nonzero rows. Semantics follow engine/cpu_forward.cpp exactly.
// Two ways to map items to threads (DeviceState::launch picks per launch; RASP_CUDA_KERNEL=old|new|auto):
// block mode, the whole block on one item (lowest latency: small batches), and warp mode, one warp per
// item and threads/32 items per block with warp-level barriers only, register-tiled matmuls and a
// register-capped kernel for more resident warps (throughput: large batches and sweeps); warp mode also skips
// weight rows whose inputs are zero at every position (RASP_CUDA_XSKIP=0|1|2). See the GPU section of
// benchmarks/RESULTS.md for why.
#ifdef RASP_CUDA_EMULATE_HOST
#include "cuda/emulate/cuda_runtime.h"  // CPU emulation for logic tests (scripts/cuda_emulate_check.sh)
#define RASP_LAUNCH(kernel, grid, block, smem, stream, ...) rasp_emu_launch(kernel, grid, block, smem, __VA_ARGS__)
#define RASP_UNROLL
#else
#define RASP_UNROLL _Pragma("unroll")
#include <cuda_runtime.h>
#define RASP_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cuda_api.h"

namespace rasp::cuda {

namespace {

#define RASP_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                   \
    cudaError_t err_ = (expr);                                                                           \
    if (err_ != cudaSuccess)                                                                             \
      throw std::runtime_error(std::string("CUDA error in ") + #expr + ": " + cudaGetErrorString(err_)); \
  } while (0)

constexpr int kMaxThreads = 256;  // the kernel's launch bound (more registers than a 1024 bound)
#ifdef RASP_CUDA_EMULATE_HOST
constexpr int kMaxGroups = 64;  // the emulation's warp groups are single threads
#else
constexpr int kMaxGroups = kMaxThreads / 32;  // thread groups per block: warps at most
#endif
constexpr int kRecordKinds = 14;  // per-layer record pointers, in LayerRecord's order
enum RecKind {
  kRecResidPre, kRecQ, kRecK, kRecV, kRecZ, kRecScores, kRecPattern, kRecResult, kRecAttnOut, kRecResidMid,
  kRecMlpPre, kRecMlpPost, kRecMlpOut, kRecResidPost
};

// ------------------------------------------------------------------------------------------ device data

struct LayerDev {
  const float *qkv, *bqkv, *wo, *bo, *win, *bin, *wout, *bout;  // qkv [D, 3HE], wo [HE, D], win [D, M], ...
  const int *qkv_rows, *wo_rows, *win_rows, *wout_rows;           // nonzero rows of each matrix
  int n_qkv_rows, n_wo_rows, n_win_rows, n_wout_rows;
  const int* wo_head_rows;  // per head: nonzero rows of W_O inside [h*E, (h+1)*E), concatenated
  const int* wo_head_off;   // [H + 1]
  const unsigned char* active;  // per head: W_O[h] has a nonzero
  int any_active;
};

struct ModelDev {
  int L, D, H, E, M, V, Vin, n_ctx, pad;
  const float *w_e, *w_pos, *w_u, *b_u;
  const int* u_rows;
  int n_u_rows;
  const LayerDev* layers;  // [L] in device memory
};

struct RecordDev {  // device pointers, null = not recorded
  float *embed, *pos_embed;
  float* const* layer;  // [L * kRecordKinds] or null
};

struct CacheDev {  // outputs of a cached run (null = not wanted)
  float *writer, *pre, *out;  // [B][NW][T][D], [B][L+1][T][D], [B][T][V]
};

struct PlanDev {
  int S = 0;                              // 0: unpatched run
  const int* start = nullptr;             // [S]
  const int* node_proj = nullptr;         // [S * NW]
  const int* slot = nullptr;              // [S * NW]: -1 or the writer's slot (edge sources)
  const int* edge_off = nullptr;          // [S * NR * 4 + 1]
  const int2* edges = nullptr;            // (writer, projection)
  const unsigned char* head_per = nullptr;  // [S * L]: the layer needs per-head results
  int n_slots = 0;
  float* slot_mem = nullptr;              // [groups in the grid][n_slots][T][D]
  const float* diag = nullptr;
  const float* mat = nullptr;
  int n_diag = 0;
  const float *clean_w = nullptr, *clean_pre = nullptr, *clean_out = nullptr, *src_w = nullptr,
              *src_out = nullptr;
  int metric = 0;
  float atol = 0.0f;
  float *msum = nullptr, *mcount = nullptr, *outs = nullptr;
};

struct Params {
  ModelDev m;
  const int32_t* tokens;
  int B, T;
  float* out;  // [B, T, V] or null
  RecordDev rec;
  CacheDev cache;
  PlanDev plan;
  float* gscratch;  // null: shared memory
  size_t scratch_floats;  // per group
  int* err;
  int groups;  // thread groups per block, each running its own items (1: the whole block is one group)
  int warp;    // groups are single warps: they synchronise with __syncwarp, not __syncthreads
  int xskip;   // warp mode: matmuls skip all-zero input rows: 0 never, 1 residual inputs, 2 every matmul
};

// The threads that run one item together: the whole block (block mode, for few items: most threads busy on
// one sequence) or one warp of it (warp mode, for many items: no block-wide barriers, and the tiny
// per-sequence loops keep 32 lanes busy instead of leaving most of 128 idle).
struct Grp {
  int tid, n;
  bool warp;
  int* idx;  // warp mode with row skipping: the group's list of rows with a nonzero input (else null)
  bool skip_all;  // skip rows in every matmul, not only those reading the residual stream
  __device__ void sync() const {
#ifdef RASP_CUDA_EMULATE_HOST
    if (!warp) __syncthreads();  // the emulation's warp groups have one thread
#else
    if (warp) __syncwarp();
    else __syncthreads();
#endif
  }
};

// ------------------------------------------------------------------------------------------ block helpers

// Y[t, j] (+)= bias[j] + sum over rows r of X[t, r] * W[r, j], for t < T, j < ncols. rows == null means
// every row in [0, nrows). X and Y are scratch (shared or global), W is a read-only weight matrix with
// leading dimension ldw, already offset to its first column. Ends with a barrier.
__device__ void mm(const Grp& g, const float* X, int ldx, int T, const float* __restrict__ W, int ldw, int ncols,
                   const int* __restrict__ rows, int nrows, const float* __restrict__ bias, float* Y, int ldy,
                   bool accumulate, bool resid_in = false) {
  if (g.warp) {
    // Warp mode: a lane owns columns and keeps kTile positions in registers, so that each weight and row
    // index is loaded once per kTile positions (not once per position) and kTile independent sums give
    // the lane instruction-level parallelism. Same terms in the same order as below: same results.
    constexpr int kTile = 8;
    // Row skipping: compiled residual streams are nearly one-hot, so most rows i have X[t, i] == 0 at
    // every position of a tile. The warp first lists the rows where some position is nonzero (a ballot
    // per 32 rows), then runs the same loop over that list only: the skipped terms are exact zeros, so the
    // sums are unchanged. Lists shorter than kSkipMin rows are not worth the extra pass. By default only
    // matmuls reading the residual stream (resid_in: the sparsest inputs) skip; attention z and MLP hidden
    // rows are denser, and listing them cost more than it saved on shuffle_dyck2 (H200, run 3).
    constexpr int kSkipMin = 16;
    const bool skip = g.idx != nullptr && nrows >= kSkipMin && (resid_in || g.skip_all);
    const int* rows_all = rows;
    const int nrows_all = nrows;
    for (int t0 = 0; t0 < T; t0 += kTile) {
      const int tn = T - t0 < kTile ? T - t0 : kTile;
      const float* x0 = X + static_cast<size_t>(t0) * ldx;
      if (skip) {
        int cnt = 0;
        for (int r0 = 0; r0 < nrows_all; r0 += 32) {  // the same trip count on every lane
#ifdef RASP_CUDA_EMULATE_HOST
          for (int k = 0; k < 32 && r0 + k < nrows_all; ++k) {  // emulated warp groups are one thread
            const int i = rows_all ? rows_all[r0 + k] : r0 + k;
            bool nz = false;
            for (int u = 0; u < tn; ++u) nz = nz || x0[static_cast<size_t>(u) * ldx + i] != 0.0f;
            if (nz) g.idx[cnt++] = i;
          }
#else
          const int r = r0 + g.tid;
          int i = 0;
          bool nz = false;
          if (r < nrows_all) {
            i = rows_all ? __ldg(rows_all + r) : r;
            for (int u = 0; u < tn; ++u) nz = nz || x0[static_cast<size_t>(u) * ldx + i] != 0.0f;
          }
          const unsigned mask = __ballot_sync(0xffffffffu, nz);
          if (nz) g.idx[cnt + __popc(mask & ((1u << g.tid) - 1u))] = i;
          cnt += __popc(mask);
#endif
        }
        g.sync();
        rows = g.idx;
        nrows = cnt;
      }
      for (int j = g.tid; j < ncols; j += g.n) {
        const float b = bias ? __ldg(bias + j) : 0.0f;
        float s[kTile];
        RASP_UNROLL
        for (int u = 0; u < kTile; ++u) {  // slots past the last position repeat it; their sums are dropped
          const int t = t0 + (u < tn ? u : tn - 1);
          s[u] = accumulate ? Y[t * ldy + j] : 0.0f;
          if (bias) s[u] = accumulate ? s[u] + b : b;
        }
        if (rows) {
          for (int r = 0; r < nrows; ++r) {
            const int i = skip ? rows[r] : __ldg(rows + r);  // the skip list is in shared memory: no __ldg
            const float w = __ldg(W + static_cast<size_t>(i) * ldw + j);
            RASP_UNROLL
            for (int u = 0; u < kTile; ++u) s[u] += x0[static_cast<size_t>(u < tn ? u : tn - 1) * ldx + i] * w;
          }
        } else {
          for (int i = 0; i < nrows; ++i) {
            const float w = __ldg(W + static_cast<size_t>(i) * ldw + j);
            RASP_UNROLL
            for (int u = 0; u < kTile; ++u) s[u] += x0[static_cast<size_t>(u < tn ? u : tn - 1) * ldx + i] * w;
          }
        }
        RASP_UNROLL
        for (int u = 0; u < kTile; ++u)
          if (u < tn) Y[(t0 + u) * ldy + j] = s[u];
      }
      if (skip) g.sync();  // every lane is done with the list before the next tile rewrites it
    }
    g.sync();
    return;
  }
  const int n = T * ncols;
  for (int idx = g.tid; idx < n; idx += g.n) {
    const int t = idx / ncols, j = idx - t * ncols;
    float s = accumulate ? Y[t * ldy + j] : 0.0f;
    if (bias) s = accumulate ? s + __ldg(bias + j) : __ldg(bias + j);
    const float* xt = X + static_cast<size_t>(t) * ldx;
    if (rows) {
      for (int r = 0; r < nrows; ++r) {
        const int i = __ldg(rows + r);
        s += xt[i] * __ldg(W + static_cast<size_t>(i) * ldw + j);
      }
    } else {
      for (int i = 0; i < nrows; ++i) s += xt[i] * __ldg(W + static_cast<size_t>(i) * ldw + j);
    }
    Y[t * ldy + j] = s;
  }
  g.sync();
}

__device__ void copy_block(const Grp& g, float* dst, const float* src, int n) {
  for (int i = g.tid; i < n; i += g.n) dst[i] = src[i];
}

// Softmax attention of every (active) head: qkv [T, 3HE] -> z [T, HE], scores/probabilities in P [H, T, T].
__device__ void attention(const Grp& g, const float* qkv, int T, int H, int E, const int32_t* tok, int pad,
                          const unsigned char* __restrict__ active, bool all_heads, float* P, float* z,
                          float* rec_scores, float* rec_pattern) {
  const int ld = 3 * H * E, HE = H * E, TT = T * T;
  const float neg_inf = -INFINITY;
  for (int idx = g.tid; idx < H * TT; idx += g.n) {
    const int h = idx / TT, r = idx - h * TT, i = r / T, j = r - i * T;
    if (!all_heads && !active[h]) continue;
    float s;
    if (pad >= 0 && tok[j] == pad) {
      s = neg_inf;
    } else {
      const float* qi = qkv + i * ld + h * E;
      const float* kj = qkv + j * ld + HE + h * E;
      s = 0.0f;
      for (int e = 0; e < E; ++e) s += qi[e] * kj[e];
    }
    P[idx] = s;
    if (rec_scores) rec_scores[idx] = s;
  }
  g.sync();
  for (int row = g.tid; row < H * T; row += g.n) {
    const int h = row / T;
    if (!all_heads && !active[h]) continue;
    float* pr = P + static_cast<size_t>(row) * T;
    float mx = neg_inf;
    for (int j = 0; j < T; ++j) mx = fmaxf(mx, pr[j]);
    if (mx == neg_inf) {
      for (int j = 0; j < T; ++j) pr[j] = 0.0f;
    } else {
      float sum = 0.0f;
      for (int j = 0; j < T; ++j) {
        const float p = pr[j] == neg_inf ? 0.0f : expf(pr[j] - mx);
        pr[j] = p;
        sum += p;
      }
      const float inv = 1.0f / sum;
      for (int j = 0; j < T; ++j) pr[j] *= inv;
    }
    if (rec_pattern)
      for (int j = 0; j < T; ++j) rec_pattern[static_cast<size_t>(row) * T + j] = pr[j];
  }
  g.sync();
  for (int idx = g.tid; idx < T * HE; idx += g.n) {
    const int i = idx / HE, rem = idx - i * HE, h = rem / E, e = rem - h * E;
    if (!all_heads && !active[h]) {
      z[idx] = 0.0f;
      continue;
    }
    const float* pr = P + (static_cast<size_t>(h) * T + i) * T;
    const float* vcol = qkv + 2 * HE + h * E + e;
    float s = 0.0f;
    for (int j = 0; j < T; ++j) s += pr[j] * vcol[j * ld];
    z[idx] = s;
  }
  g.sync();
}

// dst += proj(src - cur) over [T, D]; diff is [T, D] scratch. Ends with a barrier.
__device__ void add_proj_diff(const Grp& g, const PlanDev& pl, int p, int D, int TD, const float* src, const float* cur,
                              float* dst, float* diff) {
  if (p == kWholeOutput) {
    for (int i = g.tid; i < TD; i += g.n) dst[i] += src[i] - cur[i];
  } else if (p < pl.n_diag) {
    const float* w = pl.diag + static_cast<size_t>(p) * D;
    for (int i = g.tid; i < TD; i += g.n) dst[i] += w[i % D] * (src[i] - cur[i]);
  } else {
    for (int i = g.tid; i < TD; i += g.n) diff[i] = src[i] - cur[i];
    g.sync();
    const float* P = pl.mat + static_cast<size_t>(p - pl.n_diag) * D * D;
    mm(g, diff, D, TD / D, P, D, D, nullptr, D, nullptr, dst, D, true);
  }
  g.sync();
}

// Node patch in place: v = v + proj(src - v). Ends with a barrier.
__device__ void node_patch(const Grp& g, const PlanDev& pl, int p, int D, int TD, const float* src, float* v, float* diff) {
  if (p == kWholeOutput) {
    for (int i = g.tid; i < TD; i += g.n) v[i] = src[i];
  } else if (p < pl.n_diag) {
    const float* w = pl.diag + static_cast<size_t>(p) * D;
    for (int i = g.tid; i < TD; i += g.n) v[i] += w[i % D] * (src[i] - v[i]);
  } else {
    for (int i = g.tid; i < TD; i += g.n) diff[i] = src[i] - v[i];
    g.sync();
    const float* P = pl.mat + static_cast<size_t>(p - pl.n_diag) * D * D;
    mm(g, diff, D, TD / D, P, D, D, nullptr, D, nullptr, v, D, true);
  }
  g.sync();
}

__device__ int argmax_row(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

// The metric of one position (see sequence_metric in cpu_forward.cpp); returns false when not counted.
__device__ bool position_metric(int metric, float atol, const float* p, const float* c, const float* s, int V,
                                double* value) {
  switch (metric) {
    case 1: {  // KL(softmax(clean) || softmax(patched))
      double mc = c[0], mp = p[0];
      for (int i = 1; i < V; ++i) {
        mc = fmax(mc, static_cast<double>(c[i]));
        mp = fmax(mp, static_cast<double>(p[i]));
      }
      double zc = 0.0, zp = 0.0;
      for (int i = 0; i < V; ++i) {
        zc += exp(c[i] - mc);
        zp += exp(p[i] - mp);
      }
      const double lzc = log(zc) + mc, lzp = log(zp) + mp;
      double kl = 0.0;
      for (int i = 0; i < V; ++i) {
        const double lc = c[i] - lzc, lp = p[i] - lzp;
        kl += exp(lc) * (lc - lp);
      }
      *value = fmax(kl, 0.0);
      return true;
    }
    case 2: {  // logit difference between the clean and the source answers
      const int yc = argmax_row(c, V), ys = argmax_row(s, V);
      if (yc == ys) return false;
      *value = static_cast<double>(p[yc]) - p[ys];
      return true;
    }
    case 3:
      if (V == 1) *value = fabsf(p[0] - c[0]) <= atol ? 1.0 : 0.0;
      else *value = argmax_row(p, V) == argmax_row(c, V) ? 1.0 : 0.0;
      return true;
    case 4: {
      double se = 0.0;
      for (int i = 0; i < V; ++i) se += (static_cast<double>(p[i]) - c[i]) * (static_cast<double>(p[i]) - c[i]);
      *value = se / V;
      return true;
    }
    default:
      return false;
  }
}

// ------------------------------------------------------------------------------------------ the kernel

struct Layout {  // float offsets of one block's scratch
  size_t x, acc, work, red, res, diff, inb, idx, total;
};

__host__ __device__ inline size_t round2(size_t n) { return (n + 3) & ~size_t(3); }  // 16-byte multiples

// idx: room for the row list of row skipping (residual inputs have D rows; every matrix at most
// max(D, H*E, M)), only with xskip.
__host__ __device__ inline Layout make_layout(int T, int D, int H, int E, int M, int V, bool full, int xskip) {
  const size_t TD = round2(static_cast<size_t>(T) * D);
  size_t attn = round2(static_cast<size_t>(T) * 3 * H * E) + round2(static_cast<size_t>(H) * T * T) +
                round2(static_cast<size_t>(T) * H * E);
  size_t work = attn;
  work = work > round2(static_cast<size_t>(T) * M) ? work : round2(static_cast<size_t>(T) * M);
  work = work > round2(static_cast<size_t>(T) * V) ? work : round2(static_cast<size_t>(T) * V);
  Layout L{};
  L.x = 0;
  L.acc = TD;
  L.work = 2 * TD;
  L.red = L.work + work;
  L.res = L.red + round2(static_cast<size_t>(4) * T);  // 2T doubles
  L.diff = L.res + TD;
  L.inb = L.diff + TD;
  L.idx = full ? L.inb + TD : L.res + TD;  // unpatched runs need no diff/inb
  int max_rows = D;
  if (xskip >= 2) {
    max_rows = max_rows > H * E ? max_rows : H * E;
    max_rows = max_rows > M ? max_rows : M;
  }
  L.total = L.idx + (xskip ? round2(static_cast<size_t>(max_rows)) : 0);
  return L;
}

// kMinBlocks caps the registers (65536 / (kMaxThreads * kMinBlocks) per thread): uncapped, the kernel takes
// ~246 registers, which allows only 2 blocks of 128 threads per SM; the warp-mode variants trade a few
// spills (to L1) for 2-4x the resident warps.
template <int kMinBlocks>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks) engine_kernel(Params p) {
#ifdef RASP_CUDA_EMULATE_HOST
  float4* smem_f4 = ::smem_f4;
#else
  extern __shared__ float4 smem_f4[];
#endif
  const ModelDev& m = p.m;
  const int T = p.T, D = m.D, H = m.H, E = m.E, M = m.M, V = m.V, B = p.B;
  const int HE = H * E, TD = T * D, NW = 2 + m.L * (H + 1), NR = m.L * (H + 1) + 1;
  const PlanDev& pl = p.plan;
  const bool patched = pl.S > 0;
  const int xskip = p.warp != 0 ? p.xskip : 0;
  const Layout lay = make_layout(T, D, H, E, M, V, patched, xskip);
  const int gsize = static_cast<int>(blockDim.x) / p.groups, gi = static_cast<int>(threadIdx.x) / gsize;
  const int64_t grp_id = static_cast<int64_t>(blockIdx.x) * p.groups + gi;
  const int64_t n_grps = static_cast<int64_t>(gridDim.x) * p.groups;
  float* base = p.gscratch ? p.gscratch + static_cast<size_t>(grp_id) * p.scratch_floats
                           : reinterpret_cast<float*>(smem_f4) + static_cast<size_t>(gi) * p.scratch_floats;
  const Grp g{static_cast<int>(threadIdx.x) - gi * gsize, gsize, p.warp != 0,
              xskip ? reinterpret_cast<int*>(base + lay.idx) : nullptr, xskip >= 2};
  float* x = base + lay.x;
  float* acc = base + lay.acc;
  float* work = base + lay.work;
  double* red = reinterpret_cast<double*>(base + lay.red);
  float* res = base + lay.res;
  float* diff = base + lay.diff;
  float* inb = base + lay.inb;
  float* qkv = work;
  float* P = work + round2(static_cast<size_t>(T) * 3 * HE);
  float* z = P + round2(static_cast<size_t>(H) * T * T);
  float* slots = patched ? pl.slot_mem + static_cast<size_t>(grp_id) * pl.n_slots * TD : nullptr;

  const int64_t n_items = static_cast<int64_t>(patched ? pl.S : 1) * B;
  for (int64_t item = grp_id; item < n_items; item += n_grps) {
    const int s = static_cast<int>(item / B), b = static_cast<int>(item - static_cast<int64_t>(s) * B);
    const int32_t* tok = p.tokens + static_cast<size_t>(b) * T;
    __shared__ int bad_tokens[kMaxGroups];  // one flag per group
    int& bad_token = bad_tokens[gi];
    if (g.tid == 0) bad_token = 0;
    g.sync();
    for (int t = g.tid; t < T; t += g.n)
      if (tok[t] < 0 || tok[t] >= m.Vin) atomicExch(&bad_token, 1);
    g.sync();
    if (bad_token) {
      if (g.tid == 0) atomicExch(p.err, 1);
      g.sync();  // everyone has read bad_token before thread 0 resets it for the next item
      continue;
    }
    const size_t bTD = static_cast<size_t>(b) * TD;
    float* const* rl = p.rec.layer;
    auto rec = [&](int l, int kind) -> float* { return rl ? rl[l * kRecordKinds + kind] : nullptr; };
    const int start = patched ? pl.start[s] : 0;
    const int* nproj = patched ? pl.node_proj + static_cast<size_t>(s) * NW : nullptr;
    const int* slot = patched ? pl.slot + static_cast<size_t>(s) * NW : nullptr;
    const int* eoff = patched ? pl.edge_off + static_cast<size_t>(s) * NR * 4 : nullptr;
    auto writer_layer = [&](int w) { return w < 2 ? -1 : (w - 2) / (H + 1); };
    auto clean_w = [&](int w) { return pl.clean_w + (static_cast<size_t>(b) * NW + w) * TD; };
    auto src_w = [&](int w) { return pl.src_w + (static_cast<size_t>(b) * NW + w) * TD; };
    // The writer's output as the patched run currently has it.
    auto cur_w = [&](int w) -> const float* {
      if (slot[w] >= 0 && (writer_layer(w) >= start || nproj[w] != kNoPatch))
        return slots + static_cast<size_t>(slot[w]) * TD;
      return clean_w(w);
    };
    // dst = sum over the edges into (reader, input) of proj(source - current); false when there are none.
    auto edge_delta = [&](int reader, int input, float* dst) -> bool {
      const int k0 = eoff[reader * 4 + input], k1 = eoff[reader * 4 + input + 1];
      if (k0 == k1) return false;
      for (int i = g.tid; i < TD; i += g.n) dst[i] = 0.0f;
      g.sync();
      for (int k = k0; k < k1; ++k) {
        const int2 e = pl.edges[k];
        add_proj_diff(g, pl, e.y, D, TD, src_w(e.x), cur_w(e.x), dst, diff);
      }
      return true;
    };
    // After a writer's output is final in v: node patch, keep it for edges, cache it.
    auto finish_writer = [&](int w, float* v) {
      if (patched) {
        if (nproj[w] != kNoPatch) node_patch(g, pl, nproj[w], D, TD, src_w(w), v, diff);
        if (slot[w] >= 0) copy_block(g, slots + static_cast<size_t>(slot[w]) * TD, v, TD);
      }
      if (p.cache.writer) copy_block(g, p.cache.writer + (static_cast<size_t>(b) * NW + w) * TD, v, TD);
    };

    // ---- embeddings
    if (patched) {
      copy_block(g, x, pl.clean_pre + (static_cast<size_t>(b) * (m.L + 1) + start) * TD, TD);
      g.sync();
      for (int w = 0; w < 2; ++w) {
        if (nproj[w] == kNoPatch) continue;
        copy_block(g, res, clean_w(w), TD);
        g.sync();
        finish_writer(w, res);
        const float* before = clean_w(w);
        for (int i = g.tid; i < TD; i += g.n) x[i] += res[i] - before[i];
        g.sync();
      }
    } else {
      for (int i = g.tid; i < TD; i += g.n) {
        const int t = i / D, j = i - t * D;
        const float e = __ldg(m.w_e + static_cast<size_t>(tok[t]) * D + j);
        const float q = __ldg(m.w_pos + static_cast<size_t>(t) * D + j);
        x[i] = e + q;
        if (p.rec.embed) p.rec.embed[bTD + i] = e;
        if (p.rec.pos_embed) p.rec.pos_embed[bTD + i] = q;
        if (p.cache.writer) {
          p.cache.writer[(static_cast<size_t>(b) * NW + 0) * TD + i] = e;
          p.cache.writer[(static_cast<size_t>(b) * NW + 1) * TD + i] = q;
        }
      }
      g.sync();
    }

    for (int l = start; l < m.L; ++l) {
      const LayerDev& Ld = m.layers[l];
      if (float* r = rec(l, kRecResidPre)) copy_block(g, r + bTD, x, TD);
      if (p.cache.pre) copy_block(g, p.cache.pre + (static_cast<size_t>(b) * (m.L + 1) + l) * TD, x, TD);
      // ---- attention
      const bool rec_attn = rl && (rec(l, kRecQ) || rec(l, kRecK) || rec(l, kRecV) || rec(l, kRecZ) ||
                                   rec(l, kRecScores) || rec(l, kRecPattern) || rec(l, kRecResult));
      if (Ld.any_active || rec_attn) {
        mm(g, x, D, T, Ld.qkv, 3 * HE, 3 * HE, Ld.qkv_rows, Ld.n_qkv_rows, Ld.bqkv, qkv, 3 * HE, false,
           true);
        if (patched) {
          for (int h = 0; h < H; ++h) {
            if (!Ld.active[h]) continue;  // an inactive head's output is 0 whatever its inputs
            const int reader = l * (H + 1) + h;
            for (int mi = 0; mi < 3; ++mi) {
              if (!edge_delta(reader, mi, inb)) continue;
              const int c0 = (mi * H + h) * E;
              mm(g, inb, D, T, Ld.qkv + c0, 3 * HE, E, Ld.qkv_rows, Ld.n_qkv_rows, nullptr, qkv + c0, 3 * HE, true,
                 true);
            }
          }
        }
        float* sc = rec(l, kRecScores);
        float* pt = rec(l, kRecPattern);
        attention(g, qkv, T, H, E, tok, m.pad, Ld.active, rec_attn, P, z,
                  sc ? sc + static_cast<size_t>(b) * H * T * T : nullptr,
                  pt ? pt + static_cast<size_t>(b) * H * T * T : nullptr);
        const size_t bTHE = static_cast<size_t>(b) * T * HE;
        if (float* r = rec(l, kRecZ)) copy_block(g, r + bTHE, z, T * HE);
        float* rq = rec(l, kRecQ);
        float* rk = rec(l, kRecK);
        float* rv = rec(l, kRecV);
        if (rq || rk || rv) {
          for (int i = g.tid; i < T * HE; i += g.n) {
            const int t = i / HE, c = i - t * HE;
            const float* row = qkv + static_cast<size_t>(t) * 3 * HE;
            if (rq) rq[bTHE + i] = row[c];
            if (rk) rk[bTHE + i] = row[HE + c];
            if (rv) rv[bTHE + i] = row[2 * HE + c];
          }
        }
      }
      float* rec_result = rec(l, kRecResult);
      const bool per_head =
          rec_result || p.cache.writer || (patched && pl.head_per[static_cast<size_t>(s) * m.L + l]);
      if (!per_head) {
        // attn_out = b_O + z @ W_O (all heads at once); rows of inactive heads are not in the list
        mm(g, z, HE, T, Ld.wo, D, D, Ld.wo_rows, Ld.n_wo_rows, Ld.bo, acc, D, false);
      } else {
        for (int i = g.tid; i < TD; i += g.n) acc[i] = __ldg(Ld.bo + i % D);
        for (int h = 0; h < H; ++h) {
          const int r0 = Ld.wo_head_off[h], r1 = Ld.wo_head_off[h + 1];
          // rows are global row indices of W_O [HE, D]; X = z with the same column indexing
          mm(g, z, HE, T, Ld.wo, D, D, Ld.wo_head_rows + r0, r1 - r0, nullptr, res, D, false);
          finish_writer(2 + l * (H + 1) + h, res);
          if (rec_result)
            for (int i = g.tid; i < TD; i += g.n) {
              const int t = i / D, j = i - t * D;
              rec_result[((static_cast<size_t>(b) * T + t) * H + h) * D + j] = res[i];
            }
          for (int i = g.tid; i < TD; i += g.n) acc[i] += res[i];
          g.sync();
        }
      }
      if (float* r = rec(l, kRecAttnOut)) copy_block(g, r + bTD, acc, TD);
      for (int i = g.tid; i < TD; i += g.n) x[i] += acc[i];
      g.sync();
      if (float* r = rec(l, kRecResidMid)) copy_block(g, r + bTD, x, TD);
      // ---- MLP
      const float* in = x;
      if (patched && edge_delta(l * (H + 1) + H, kInputIn, inb)) {
        for (int i = g.tid; i < TD; i += g.n) inb[i] += x[i];
        g.sync();
        in = inb;
      }
      float* hid = work;
      mm(g, in, D, T, Ld.win, M, M, Ld.win_rows, Ld.n_win_rows, Ld.bin, hid, M, false, true);
      const size_t bTM = static_cast<size_t>(b) * T * M;
      if (float* r = rec(l, kRecMlpPre)) copy_block(g, r + bTM, hid, T * M);
      g.sync();
      for (int i = g.tid; i < T * M; i += g.n) hid[i] = hid[i] > 0.0f ? hid[i] : 0.0f;
      g.sync();
      if (float* r = rec(l, kRecMlpPost)) copy_block(g, r + bTM, hid, T * M);
      mm(g, hid, M, T, Ld.wout, D, D, Ld.wout_rows, Ld.n_wout_rows, Ld.bout, acc, D, false);
      finish_writer(2 + l * (H + 1) + H, acc);
      if (float* r = rec(l, kRecMlpOut)) copy_block(g, r + bTD, acc, TD);
      for (int i = g.tid; i < TD; i += g.n) x[i] += acc[i];
      g.sync();
      if (float* r = rec(l, kRecResidPost)) copy_block(g, r + bTD, x, TD);
    }
    if (p.cache.pre) copy_block(g, p.cache.pre + (static_cast<size_t>(b) * (m.L + 1) + m.L) * TD, x, TD);
    // ---- unembedding
    const float* fin = x;
    if (patched && edge_delta(m.L * (H + 1), kInputIn, inb)) {
      for (int i = g.tid; i < TD; i += g.n) inb[i] += x[i];
      g.sync();
      fin = inb;
    }
    float* logits = work;
    mm(g, fin, D, T, m.w_u, V, V, m.u_rows, m.n_u_rows, m.b_u, logits, V, false, true);
    const int TV = T * V;
    if (p.out) copy_block(g, p.out + static_cast<size_t>(b) * TV, logits, TV);
    if (p.cache.out) copy_block(g, p.cache.out + static_cast<size_t>(b) * TV, logits, TV);
    if (patched) {
      if (pl.outs) copy_block(g, pl.outs + static_cast<size_t>(item) * TV, logits, TV);
      if (pl.metric != 0) {
        const float* cl = pl.clean_out + static_cast<size_t>(b) * TV;
        const float* so = pl.src_out + static_cast<size_t>(b) * TV;
        for (int t = g.tid; t < T; t += g.n) {
          double v = 0.0;
          bool counted = t > 0 && !(m.pad >= 0 && tok[t] == m.pad) &&
                         position_metric(pl.metric, pl.atol, logits + t * V, cl + t * V, so + t * V, V, &v);
          red[t] = counted ? v : 0.0;
          red[T + t] = counted ? 1.0 : 0.0;
        }
        g.sync();
        if (g.tid == 0) {
          double sum = 0.0, count = 0.0;
          for (int t = 0; t < T; ++t) {
            sum += red[t];
            count += red[T + t];
          }
          pl.msum[item] = static_cast<float>(sum);
          pl.mcount[item] = static_cast<float>(count);
        }
      }
    }
    g.sync();  // the next item overwrites the scratch
  }
}

__global__ void add_kernel(const float* a, const float* b, float* c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// ------------------------------------------------------------------------------------------ host helpers

// A grow-only device buffer.
struct DevBuf {
  void* ptr = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (ptr) cudaFree(ptr);
  }
  void* ensure(size_t n) {
    if (n == 0) n = 16;
    if (n > bytes) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      bytes = 0;
      RASP_CUDA_CHECK(cudaMalloc(&ptr, n));
      bytes = n;
    }
    return ptr;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
  template <class T>
  T* upload(const std::vector<T>& v) {
    ensure(v.size() * sizeof(T));
    if (!v.empty()) RASP_CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return as<T>();
  }
  template <class T>
  T* upload(const T* src, size_t n) {
    ensure(n * sizeof(T));
    if (n) RASP_CUDA_CHECK(cudaMemcpy(ptr, src, n * sizeof(T), cudaMemcpyHostToDevice));
    return as<T>();
  }
};

class DeviceGuard {
 public:
  explicit DeviceGuard(int dev) {
    RASP_CUDA_CHECK(cudaGetDevice(&old_));
    if (old_ != dev) RASP_CUDA_CHECK(cudaSetDevice(dev));
  }
  ~DeviceGuard() { cudaSetDevice(old_); }

 private:
  int old_ = 0;
};

}  // namespace

// ------------------------------------------------------------------------------------------ engine state

struct DeviceState {
  std::mutex mu;
  int device = 0;
  int threads = 128;
  int sm_count = 1;
  size_t smem_optin = 48 * 1024;
  ModelDims dims;
  DevBuf weights, ints, layers;
  ModelDev mdev{};
  // workspaces reused across calls
  DevBuf tokens, source, out, scratch, err, rec_ptrs, slot_mem;
  DevBuf clean_w, clean_pre, clean_out, src_w, src_pre, src_out;
  DevBuf p_start, p_node, p_slot, p_eoff, p_edges, p_headper, p_diag, p_mat, p_sum, p_count, p_outs;
  std::vector<std::unique_ptr<DevBuf>> rec_bufs;
  static constexpr int kVariants = 3;  // engine_kernel<1>, <2>, <4>
  size_t smem_attr[kVariants] = {48 * 1024, 48 * 1024, 48 * 1024};  // dynamic shared memory limits as raised
  int occ_threads[kVariants] = {0, 0, 0}, occ_blocks[kVariants] = {0, 0, 0};
  size_t occ_smem[kVariants] = {0, 0, 0};
  int warp_min_blocks = 2;  // RASP_CUDA_MINBLOCKS: the register cap of the warp-mode kernel (1, 2 or 4)

  int kernel_mode = 0;  // RASP_CUDA_KERNEL: 0 auto, 1 block ("old"), 2 warp ("new")
  bool threads_set = false;  // set_block_threads was called: warp mode uses `threads` too
  int xskip = 1;  // RASP_CUDA_XSKIP: warp-mode matmuls skip all-zero input rows: 0 no, 1 residual inputs, 2 all

  // Threads per block in warp mode: the set size, else 256 (8 warps: measured a little faster than 128 on
  // an H200, run 2), halved back to 128 where 8 groups' scratch would not fit in shared memory.
  int warp_threads(size_t group_bytes) const {
    if (threads_set) return threads;
    int t = 256;
    while (t > 128 && static_cast<size_t>(t / 32) * group_bytes > smem_optin) t /= 2;
    return t;
  }

  // Warp mode (a warp per item, threads/32 items per block) pays off once there are enough items to fill
  // the GPU with warps; below that block mode spreads one sequence over the whole block, which has lower
  // latency. Warp mode needs each group's scratch in shared memory.
  bool use_warp_mode(int64_t n_items, size_t group_bytes, int wthreads) const {
    if (kernel_mode == 1) return false;
    const int groups = std::max(wthreads / 32, 1);
    if (group_bytes * groups > smem_optin) return false;
    if (kernel_mode == 2) return true;
    return n_items >= static_cast<int64_t>(16) * sm_count;
  }

  // Launch settings for a run: grid size and where the scratch lives.
  void launch(Params& prm, int64_t n_items, bool full, cudaStream_t stream) {
    auto layout = [&](int xs) {
      return make_layout(prm.T, dims.d_model, dims.n_heads, dims.d_head, dims.d_mlp, dims.d_vocab_out, full, xs);
    };
    // Row skipping needs a little more scratch per group; where that would cost warp mode, go without it.
    int xs = xskip;
    Layout lay = layout(xs);
    int wthreads = warp_threads(lay.total * sizeof(float));
    bool warp = use_warp_mode(n_items, lay.total * sizeof(float), wthreads);
    if (xs && !warp) {
      xs = 0;
      lay = layout(0);
      wthreads = warp_threads(lay.total * sizeof(float));
      warp = use_warp_mode(n_items, lay.total * sizeof(float), wthreads);
    }
    prm.scratch_floats = lay.total;  // a multiple of 4 floats: every group's scratch stays 16-byte aligned
    const size_t group_bytes = lay.total * sizeof(float);
#ifdef RASP_CUDA_EMULATE_HOST
    // the emulation runs RASP_EMU_THREADS threads per block: in warp mode each is a group of one
    const int groups = warp ? std::min(RASP_EMU_THREADS, kMaxGroups) : 1;
    const int block = warp ? groups : threads;
    (void)wthreads;
#else
    const int groups = warp ? std::max(wthreads / 32, 1) : 1;
    const int block = warp ? wthreads : threads;
#endif
    prm.groups = groups;
    prm.warp = warp ? 1 : 0;
    prm.xskip = warp ? xs : 0;
    const size_t bytes = group_bytes * groups;
    // block mode keeps the original uncapped kernel; warp mode takes the register-capped one
    const int var = !warp ? 0 : warp_min_blocks >= 4 ? 2 : warp_min_blocks >= 2 ? 1 : 0;
    void (*kernel)(Params) = var == 0 ? engine_kernel<1> : var == 1 ? engine_kernel<2> : engine_kernel<4>;
    size_t smem = bytes;
    if (bytes > smem_optin) {
      smem = 0;
    } else if (bytes > 48 * 1024 && bytes > smem_attr[var]) {
      RASP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
      smem_attr[var] = bytes;
    }
    int per_sm = 0;
    if (occ_threads[var] == block && occ_smem[var] == smem) {  // the occupancy query costs microseconds
      per_sm = occ_blocks[var];
    } else {
      RASP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, smem));
      per_sm = std::max(per_sm, 1);
      occ_threads[var] = block;
      occ_smem[var] = smem;
      occ_blocks[var] = per_sm;
    }
    const int64_t blocks_needed = (n_items + groups - 1) / groups;
    int64_t grid = std::min<int64_t>(blocks_needed, static_cast<int64_t>(sm_count) * per_sm);
    grid = std::max<int64_t>(grid, 1);
    const int64_t n_grps = grid * groups;
    if (smem == 0) {
      prm.gscratch = static_cast<float*>(scratch.ensure(static_cast<size_t>(n_grps) * group_bytes));
    } else {
      prm.gscratch = nullptr;
    }
    if (prm.plan.S > 0) {
      prm.plan.slot_mem = static_cast<float*>(
          slot_mem.ensure(static_cast<size_t>(n_grps) * std::max(prm.plan.n_slots, 1) * prm.T * dims.d_model *
                          sizeof(float)));
    }
    prm.err = err.as<int>();
    RASP_CUDA_CHECK(cudaMemsetAsync(prm.err, 0, sizeof(int), stream));
    RASP_LAUNCH(kernel, static_cast<unsigned>(grid), block, smem, stream, prm);
    RASP_CUDA_CHECK(cudaGetLastError());
  }

  void check_err(cudaStream_t stream) {
    int flag = 0;
    RASP_CUDA_CHECK(cudaMemcpyAsync(&flag, err.ptr, sizeof(int), cudaMemcpyDeviceToHost, stream));
    RASP_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (flag) throw std::invalid_argument("tokens: a token id is outside [0, d_vocab=" +
                                          std::to_string(dims.d_vocab) + ")");
  }

  Params base_params(const int32_t* d_tokens, int B, int T) const {
    Params prm{};
    prm.m = mdev;
    prm.tokens = d_tokens;
    prm.B = B;
    prm.T = T;
    return prm;
  }

  // A cached clean run of d_tokens on the device: writer outputs, residuals before each layer, outputs.
  void cached_run(const int32_t* d_tokens, int B, int T, DevBuf& w, DevBuf& pre, DevBuf& out) {
    const size_t TD = static_cast<size_t>(T) * dims.d_model;
    Params prm = base_params(d_tokens, B, T);
    prm.cache.writer = static_cast<float*>(w.ensure(static_cast<size_t>(B) * dims.n_writers() * TD * 4));
    prm.cache.pre = static_cast<float*>(pre.ensure(static_cast<size_t>(B) * (dims.n_layers + 1) * TD * 4));
    prm.cache.out = static_cast<float*>(out.ensure(static_cast<size_t>(B) * T * dims.d_vocab_out * 4));
    launch(prm, B, false, nullptr);
  }
};

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_name() {
  if (device_count() == 0) return {};
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return {};
  return prop.name;
}

bool smoke_test() {
  if (device_count() == 0) return false;
  const int n = 1000;
  std::vector<float> ha(n), hb(n), hc(n, 0.0f);
  for (int i = 0; i < n; ++i) {
    ha[i] = static_cast<float>(i);
    hb[i] = 2.0f * static_cast<float>(i);
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  bool ok = cudaMalloc(&da, n * sizeof(float)) == cudaSuccess && cudaMalloc(&db, n * sizeof(float)) == cudaSuccess &&
            cudaMalloc(&dc, n * sizeof(float)) == cudaSuccess;
  if (ok) {
    cudaMemcpy(da, ha.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    RASP_LAUNCH(add_kernel, (n + 255) / 256, 256, 0, nullptr, da, db, dc, n);
    ok = cudaMemcpy(hc.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  if (!ok) return false;
  for (int i = 0; i < n; ++i)
    if (hc[i] != 3.0f * static_cast<float>(i)) return false;
  return true;
}

// ------------------------------------------------------------------------------------------ CudaEngine

CudaEngine::CudaEngine(const Model& m, int device) : st_(std::make_unique<DeviceState>()) {
  if (device < 0 || device >= device_count())
    throw std::invalid_argument("CudaEngine: CUDA device " + std::to_string(device) + " is not available (" +
                                std::to_string(device_count()) + " visible)");
  DeviceState& st = *st_;
  st.device = device;
  DeviceGuard guard(device);
  cudaDeviceProp prop{};
  RASP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  st.sm_count = prop.multiProcessorCount;
  // leave room for the kernel's static shared memory and the runtime's reserve
  st.smem_optin = prop.sharedMemPerBlockOptin > 2048 ? prop.sharedMemPerBlockOptin - 2048 : 0;
  if (const char* km = std::getenv("RASP_CUDA_KERNEL")) {
    const std::string v(km);
    if (v == "old" || v == "block") st.kernel_mode = 1;
    else if (v == "new" || v == "warp") st.kernel_mode = 2;
    else if (!v.empty() && v != "auto")
      throw std::invalid_argument("RASP_CUDA_KERNEL must be auto, old (block) or new (warp), not '" + v + "'");
  }
  if (const char* mb = std::getenv("RASP_CUDA_MINBLOCKS")) {
    const std::string v(mb);
    if (v == "1" || v == "2" || v == "4") st.warp_min_blocks = v[0] - '0';
    else if (!v.empty()) throw std::invalid_argument("RASP_CUDA_MINBLOCKS must be 1, 2 or 4, not '" + v + "'");
  }
  if (const char* xs = std::getenv("RASP_CUDA_XSKIP")) {
    const std::string v(xs);
    if (v == "0" || v == "1" || v == "2") st.xskip = v[0] - '0';
    else if (!v.empty()) throw std::invalid_argument("RASP_CUDA_XSKIP must be 0, 1 or 2, not '" + v + "'");
  }
  st.dims = m.dims;
  const ModelDims& d = m.dims;
  const int D = d.d_model, H = d.n_heads, E = d.d_head, L = d.n_layers;

  // Pack every float array into one buffer and every row list into another; remember offsets.
  std::vector<float> f;
  std::vector<int> ints;
  auto put_f = [&](const float* src, size_t n) {
    const size_t off = f.size();
    f.insert(f.end(), src, src + n);
    while (f.size() % 4) f.push_back(0.0f);  // 16-byte alignment of every array
    return off;
  };
  auto put_i = [&](const std::vector<int32_t>& v) {
    const size_t off = ints.size();
    ints.insert(ints.end(), v.begin(), v.end());
    return off;
  };
  struct LayerOff {
    size_t qkv, bqkv, wo, bo, win, bin, wout, bout, qkv_rows, wo_rows, win_rows, wout_rows, head_rows, head_off,
        active;
    int n_qkv, n_wo, n_win, n_wout, any;
  };
  const size_t o_we = put_f(m.w_e.data(), m.w_e.size());
  const size_t o_wpos = put_f(m.w_pos.data(), m.w_pos.size());
  const size_t o_wu = put_f(m.w_u.dense.data(), m.w_u.dense.size());
  const size_t o_bu = put_f(m.b_u.data(), m.b_u.size());
  const size_t o_urows = put_i(m.w_u.nz_rows);
  std::vector<LayerOff> lo(L);
  for (int l = 0; l < L; ++l) {
    const LayerWeights& W = m.layers[l];
    LayerOff& o = lo[l];
    o.qkv = put_f(W.qkv.dense.data(), W.qkv.dense.size());
    o.bqkv = put_f(W.bqkv.data(), W.bqkv.size());
    // W_O of all heads stacked: [H*E, D]
    std::vector<float> wo(static_cast<size_t>(H) * E * D);
    std::vector<int32_t> wo_rows, head_rows, head_off{0};
    std::vector<int32_t> active;
    int any = 0;
    for (int h = 0; h < H; ++h) {
      std::copy(W.wo[h].dense.begin(), W.wo[h].dense.end(), wo.begin() + static_cast<size_t>(h) * E * D);
      for (int32_t r : W.wo[h].nz_rows) {
        wo_rows.push_back(h * E + r);
        head_rows.push_back(h * E + r);
      }
      head_off.push_back(static_cast<int32_t>(head_rows.size()));
      active.push_back(W.head_active[h]);
      any |= W.head_active[h];
    }
    o.wo = put_f(wo.data(), wo.size());
    o.bo = put_f(W.b_o.data(), W.b_o.size());
    o.win = put_f(W.w_in.dense.data(), W.w_in.dense.size());
    o.bin = put_f(W.b_in.data(), W.b_in.size());
    o.wout = put_f(W.w_out.dense.data(), W.w_out.dense.size());
    o.bout = put_f(W.b_out.data(), W.b_out.size());
    o.qkv_rows = put_i(W.qkv.nz_rows);
    o.wo_rows = put_i(wo_rows);
    o.win_rows = put_i(W.w_in.nz_rows);
    o.wout_rows = put_i(W.w_out.nz_rows);
    o.head_rows = put_i(head_rows);
    o.head_off = put_i(head_off);
    // active flags as bytes packed into ints (one int per head keeps indexing simple: read as bytes)
    std::vector<int32_t> packed((H + 3) / 4 + 1, 0);
    for (int h = 0; h < H; ++h) packed[h / 4] |= (active[h] ? 1 : 0) << (8 * (h % 4));
    o.active = put_i(packed);
    o.n_qkv = static_cast<int>(W.qkv.nz_rows.size());
    o.n_wo = static_cast<int>(wo_rows.size());
    o.n_win = static_cast<int>(W.w_in.nz_rows.size());
    o.n_wout = static_cast<int>(W.w_out.nz_rows.size());
    o.any = any;
  }
  const float* fw = st.weights.upload(f);
  const int* iw = st.ints.upload(ints);
  std::vector<LayerDev> ld(L);
  for (int l = 0; l < L; ++l) {
    const LayerOff& o = lo[l];
    LayerDev& x = ld[l];
    x.qkv = fw + o.qkv;
    x.bqkv = fw + o.bqkv;
    x.wo = fw + o.wo;
    x.bo = fw + o.bo;
    x.win = fw + o.win;
    x.bin = fw + o.bin;
    x.wout = fw + o.wout;
    x.bout = fw + o.bout;
    x.qkv_rows = iw + o.qkv_rows;
    x.wo_rows = iw + o.wo_rows;
    x.win_rows = iw + o.win_rows;
    x.wout_rows = iw + o.wout_rows;
    x.n_qkv_rows = o.n_qkv;
    x.n_wo_rows = o.n_wo;
    x.n_win_rows = o.n_win;
    x.n_wout_rows = o.n_wout;
    x.wo_head_rows = iw + o.head_rows;
    x.wo_head_off = iw + o.head_off;
    x.active = reinterpret_cast<const unsigned char*>(iw + o.active);
    x.any_active = o.any;
  }
  ModelDev& md = st.mdev;
  md.L = L;
  md.D = D;
  md.H = H;
  md.E = E;
  md.M = d.d_mlp;
  md.V = d.d_vocab_out;
  md.Vin = d.d_vocab;
  md.n_ctx = d.n_ctx;
  md.pad = d.pad_token_id;
  md.w_e = fw + o_we;
  md.w_pos = fw + o_wpos;
  md.w_u = fw + o_wu;
  md.b_u = fw + o_bu;
  md.u_rows = iw + o_urows;
  md.n_u_rows = static_cast<int>(m.w_u.nz_rows.size());
  md.layers = st.layers.upload(ld);
  st.err.ensure(sizeof(int));
}

CudaEngine::~CudaEngine() {
  if (st_) {
    cudaSetDevice(st_->device);
    st_.reset();
  }
}

void CudaEngine::set_block_threads(int n) {
  if (n < 32 || n > kMaxThreads || n % 32 != 0)
    throw std::invalid_argument("CudaEngine: threads per block must be a multiple of 32 in [32, " +
                                std::to_string(kMaxThreads) + "], got " +
                                std::to_string(n));
  st_->threads = n;
  st_->threads_set = true;
}
int CudaEngine::block_threads() const { return st_->threads; }
int CudaEngine::device() const { return st_->device; }
std::string CudaEngine::device_name() const {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, st_->device) != cudaSuccess) return {};
  return prop.name;
}

void CudaEngine::forward_device(const int32_t* d_tokens, int B, int T, float* d_out, uintptr_t stream) {
  if (B <= 0 || T <= 0) return;
  if (T > st_->dims.n_ctx) throw std::invalid_argument("tokens: sequence length exceeds n_ctx");
  std::lock_guard<std::mutex> lock(st_->mu);
  DeviceGuard guard(st_->device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  Params prm = st_->base_params(d_tokens, B, T);
  prm.out = d_out;
  st_->launch(prm, B, false, s);
  st_->check_err(s);
}

void CudaEngine::forward_host(const int32_t* tokens, int B, int T, float* out, const Record* rec) {
  if (B <= 0 || T <= 0) return;
  std::lock_guard<std::mutex> lock(st_->mu);
  DeviceState& st = *st_;
  DeviceGuard guard(st.device);
  const ModelDims& d = st.dims;
  const int32_t* dt = st.tokens.upload(tokens, static_cast<size_t>(B) * T);
  const size_t n_out = static_cast<size_t>(B) * T * d.d_vocab_out;
  Params prm = st.base_params(dt, B, T);
  prm.out = static_cast<float*>(st.out.ensure(n_out * sizeof(float)));
  // device buffers for the requested activations
  std::vector<std::pair<float*, float*>> copies;  // (device, host)
  std::vector<size_t> sizes;
  size_t n_buf = 0;
  const size_t TD = static_cast<size_t>(B) * T * d.d_model, THE = static_cast<size_t>(B) * T * d.n_heads * d.d_head,
               HTT = static_cast<size_t>(B) * d.n_heads * T * T, THD = static_cast<size_t>(B) * T * d.n_heads * d.d_model,
               TM = static_cast<size_t>(B) * T * d.d_mlp;
  auto dev_for = [&](float* host, size_t n) -> float* {
    if (!host) return nullptr;
    if (st.rec_bufs.size() <= n_buf) st.rec_bufs.push_back(std::make_unique<DevBuf>());
    float* dptr = static_cast<float*>(st.rec_bufs[n_buf++]->ensure(n * sizeof(float)));
    copies.emplace_back(dptr, host);
    sizes.push_back(n);
    return dptr;
  };
  std::vector<float*> layer_ptrs;
  if (rec) {
    prm.rec.embed = dev_for(rec->embed, TD);
    prm.rec.pos_embed = dev_for(rec->pos_embed, TD);
    if (!rec->layers.empty()) {
      layer_ptrs.assign(static_cast<size_t>(d.n_layers) * kRecordKinds, nullptr);
      for (int l = 0; l < d.n_layers; ++l) {
        const LayerRecord& r = rec->layers[l];
        float** o = layer_ptrs.data() + static_cast<size_t>(l) * kRecordKinds;
        o[kRecResidPre] = dev_for(r.resid_pre, TD);
        o[kRecQ] = dev_for(r.q, THE);
        o[kRecK] = dev_for(r.k, THE);
        o[kRecV] = dev_for(r.v, THE);
        o[kRecZ] = dev_for(r.z, THE);
        o[kRecScores] = dev_for(r.scores, HTT);
        o[kRecPattern] = dev_for(r.pattern, HTT);
        o[kRecResult] = dev_for(r.result, THD);
        o[kRecAttnOut] = dev_for(r.attn_out, TD);
        o[kRecResidMid] = dev_for(r.resid_mid, TD);
        o[kRecMlpPre] = dev_for(r.mlp_pre, TM);
        o[kRecMlpPost] = dev_for(r.mlp_post, TM);
        o[kRecMlpOut] = dev_for(r.mlp_out, TD);
        o[kRecResidPost] = dev_for(r.resid_post, TD);
      }
      prm.rec.layer = st.rec_ptrs.upload(layer_ptrs);
    }
  }
  st.launch(prm, B, false, nullptr);
  st.check_err(nullptr);
  RASP_CUDA_CHECK(cudaMemcpy(out, prm.out, n_out * sizeof(float), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < copies.size(); ++i)
    if (sizes[i]) RASP_CUDA_CHECK(cudaMemcpy(copies[i].second, copies[i].first, sizes[i] * sizeof(float),
                                             cudaMemcpyDeviceToHost));
}

void CudaEngine::sweep_host(const int32_t* tokens, const int32_t* source_tokens, int B, int T, int n_override,
                            const int32_t* override_ids, const float* override_values,
                            const std::vector<PatchPlan>& plans, const Projections& proj, Metric metric, float atol,
                            float* metric_sum, float* metric_count, float* outs) {
  const int S = static_cast<int>(plans.size());
  if (S == 0 || B <= 0 || T <= 0) return;
  std::lock_guard<std::mutex> lock(st_->mu);
  DeviceState& st = *st_;
  DeviceGuard guard(st.device);
  const ModelDims& d = st.dims;
  const int NW = d.n_writers(), NR = d.n_readers(), L = d.n_layers, H = d.n_heads;
  const size_t n = static_cast<size_t>(S) * B;
  // clean and source runs, once
  const int32_t* dt = st.tokens.upload(tokens, static_cast<size_t>(B) * T);
  st.cached_run(dt, B, T, st.clean_w, st.clean_pre, st.clean_out);
  st.check_err(nullptr);
  const size_t TD = static_cast<size_t>(T) * d.d_model;
  if (source_tokens) {
    const int32_t* ds = st.source.upload(source_tokens, static_cast<size_t>(B) * T);
    st.cached_run(ds, B, T, st.src_w, st.src_pre, st.src_out);
    st.check_err(nullptr);
  } else {  // no source run: every patched writer has an override; the rest reads as zeros
    const size_t nw = static_cast<size_t>(B) * NW * TD, no = static_cast<size_t>(B) * T * d.d_vocab_out;
    RASP_CUDA_CHECK(cudaMemset(st.src_w.ensure(nw * sizeof(float)), 0, nw * sizeof(float)));
    RASP_CUDA_CHECK(cudaMemset(st.src_out.ensure(no * sizeof(float)), 0, no * sizeof(float)));
  }
  for (int k = 0; k < n_override; ++k)  // [B, T, D] into writer override_ids[k]'s slot of every item
    RASP_CUDA_CHECK(cudaMemcpy2D(st.src_w.as<float>() + static_cast<size_t>(override_ids[k]) * TD,
                                 NW * TD * sizeof(float), override_values + static_cast<size_t>(k) * B * TD,
                                 TD * sizeof(float), TD * sizeof(float), B, cudaMemcpyHostToDevice));
  // flatten the plans
  std::vector<int32_t> start(S), node(static_cast<size_t>(S) * NW), slot(static_cast<size_t>(S) * NW, -1),
      eoff(static_cast<size_t>(S) * NR * 4 + 1, 0);
  std::vector<int2> edges;
  std::vector<unsigned char> head_per(static_cast<size_t>(S) * std::max(L, 1), 0);
  int n_slots = 0;
  for (int s = 0; s < S; ++s) {
    const PatchPlan& pl = plans[s];
    start[s] = pl.start_layer;
    int next_slot = 0;
    for (int w = 0; w < NW; ++w) node[static_cast<size_t>(s) * NW + w] = pl.node_proj[w];
    for (int r = 0; r < NR; ++r)
      for (int in = 0; in < kNumInputs; ++in) {
        eoff[(static_cast<size_t>(s) * NR + r) * 4 + in] = static_cast<int32_t>(edges.size());
        for (const auto& [w, pj] : pl.edges_into(r, in)) {
          edges.push_back(make_int2(w, pj));
          int32_t& sl = slot[static_cast<size_t>(s) * NW + w];
          if (sl < 0) sl = next_slot++;
        }
      }
    n_slots = std::max(n_slots, next_slot);
    for (int w = 2; w < NW; ++w) {
      const int l = d.writer_layer(w);
      if (d.writer_is_mlp(w)) continue;
      if (pl.node_proj[w] != kNoPatch || slot[static_cast<size_t>(s) * NW + w] >= 0)
        head_per[static_cast<size_t>(s) * L + l] = 1;
    }
  }
  eoff.back() = static_cast<int32_t>(edges.size());
  // (eoff[(s*NR + r)*4 + in + 1] of the last input of a plan is the next plan's first offset: the same
  // value, since the edges are appended in that order.)
  Params prm = st.base_params(dt, B, T);
  PlanDev& pd = prm.plan;
  pd.S = S;
  pd.start = st.p_start.upload(start);
  pd.node_proj = st.p_node.upload(node);
  pd.slot = st.p_slot.upload(slot);
  pd.edge_off = st.p_eoff.upload(eoff);
  pd.edges = st.p_edges.upload(edges);
  pd.head_per = st.p_headper.upload(head_per);
  pd.n_slots = n_slots;
  pd.n_diag = proj.n_diag;
  pd.diag = st.p_diag.upload(proj.diag, static_cast<size_t>(proj.n_diag) * d.d_model);
  pd.mat = st.p_mat.upload(proj.mat, static_cast<size_t>(proj.n_mat) * d.d_model * d.d_model);
  pd.clean_w = st.clean_w.as<float>();
  pd.clean_pre = st.clean_pre.as<float>();
  pd.clean_out = st.clean_out.as<float>();
  pd.src_w = st.src_w.as<float>();
  pd.src_out = st.src_out.as<float>();
  pd.metric = static_cast<int>(metric);
  pd.atol = atol;
  pd.msum = static_cast<float*>(st.p_sum.ensure(n * sizeof(float)));
  pd.mcount = static_cast<float*>(st.p_count.ensure(n * sizeof(float)));
  const size_t TV = static_cast<size_t>(T) * d.d_vocab_out;
  pd.outs = outs ? static_cast<float*>(st.p_outs.ensure(n * TV * sizeof(float))) : nullptr;
  if (metric == Metric::kNone) {
    RASP_CUDA_CHECK(cudaMemset(pd.msum, 0, n * sizeof(float)));
    RASP_CUDA_CHECK(cudaMemset(pd.mcount, 0, n * sizeof(float)));
  }
  st.launch(prm, static_cast<int64_t>(n), true, nullptr);
  st.check_err(nullptr);
  RASP_CUDA_CHECK(cudaMemcpy(metric_sum, pd.msum, n * sizeof(float), cudaMemcpyDeviceToHost));
  RASP_CUDA_CHECK(cudaMemcpy(metric_count, pd.mcount, n * sizeof(float), cudaMemcpyDeviceToHost));
  if (outs) RASP_CUDA_CHECK(cudaMemcpy(outs, pd.outs, n * TV * sizeof(float), cudaMemcpyDeviceToHost));
  (void)H;
}

}  // namespace rasp::cuda
