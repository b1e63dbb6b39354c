// Block and warp operations of one sequence: sparse-row matmuls, attention, the MLP, patch application.
// Device functions only; `engine_kernel` (kernel.cuh) composes them.
#pragma once

#include "cuda/device_types.cuh"

namespace rasp::cuda {
namespace {

// ------------------------------------------------------------------------------------------ block helpers

// Warp mode's row skipping: lists in g.idx, in increasing order, the indices r into `rows` (row i = rows[r],
// or r when rows is null) where X[t, i] is non-zero at some position t of the tile of tn positions at x0;
// returns their count.
// Compiled residual streams are nearly one-hot, so most rows are zero at every position of a tile. Ends
// with a barrier.
__device__ int list_rows(const Grp& g, const float* x0, int ldx, int tn, const int* __restrict__ rows, int nrows) {
  int cnt = 0;
  for (int r0 = 0; r0 < nrows; r0 += 32) {  // the same trip count on every lane
#ifdef RASP_CUDA_EMULATE_HOST
    for (int k = 0; k < 32 && r0 + k < nrows; ++k) {  // emulated warp groups are one thread
      const int i = rows ? rows[r0 + k] : r0 + k;
      bool nz = false;
      for (int u = 0; u < tn; ++u) nz = nz || x0[static_cast<size_t>(u) * ldx + i] != 0.0f;
      if (nz) g.idx[cnt++] = r0 + k;
    }
#else
    const int r = r0 + g.tid;
    int i = 0;
    bool nz = false;
    if (r < nrows) {
      i = rows ? __ldg(rows + r) : r;
      for (int u = 0; u < tn; ++u) nz = nz || x0[static_cast<size_t>(u) * ldx + i] != 0.0f;
    }
    const unsigned mask = __ballot_sync(0xffffffffu, nz);
    if (nz) g.idx[cnt + __popc(mask & ((1u << g.tid) - 1u))] = r;
    cnt += __popc(mask);
#endif
  }
  g.sync();
  return cnt;
}

// Y[t, j] (+)= bias[j] for t < T, j < ncols, the start of every product (bias null: 0, or Y unchanged).
__device__ inline float start_value(const float* Y, int ldy, int t, int j, const float* __restrict__ bias,
                                    bool accumulate) {
  float s = accumulate ? Y[t * ldy + j] : 0.0f;
  if (bias) s = accumulate ? s + __ldg(bias + j) : __ldg(bias + j);
  return s;
}

// The product over a CSR matrix: each position's rows with a non-zero input add their non-zero weights to
// Y, row after row in increasing order (the dense loop's order, less its exact zeros: the same sums). Threads
// form teams of up to 32 (warp mode: the group) that take positions in turn; a team's lanes split a row's
// entries (distinct columns) and meet between rows. Warp mode with a row list scans only its listed rows.
__device__ void mm_sparse(const Grp& g, const float* X, int ldx, int T, const MatDev& W, int c0, int ncols,
                          const int* __restrict__ rows, int nrows, const float* __restrict__ bias, float* Y, int ldy,
                          bool accumulate, bool listed) {
  const int team_n = g.n < 32 ? g.n : 32;
  const int lane = g.tid % team_n, team = g.tid / team_n, n_teams = g.n / team_n;
  auto team_sync = [&] {
#ifndef RASP_CUDA_EMULATE_HOST
    if (n_teams > 1) {
      __syncwarp();
      return;
    }
#endif
    g.sync();  // one team: the group (the emulation's groups are at most 4 threads: always one team)
  };
  const int tile = listed ? 8 : 1;  // positions per row list (warp mode), else per team turn
  for (int t0 = team * tile; t0 < T; t0 += n_teams * tile) {
    const int tn = T - t0 < tile ? T - t0 : tile;
    const float* x0 = X + static_cast<size_t>(t0) * ldx;
    int n = nrows;
    if (listed) n = list_rows(g, x0, ldx, tn, rows, nrows);  // warp mode: one team
    for (int u = 0; u < tn; ++u) {
      const int t = t0 + u;
      const float* xt = X + static_cast<size_t>(t) * ldx;
      float* yt = Y + static_cast<size_t>(t) * ldy;
      for (int j = lane; j < ncols; j += team_n) yt[j] = start_value(Y, ldy, t, j, bias, accumulate);
      team_sync();
      for (int q = 0; q < n; ++q) {
        const int r = listed ? g.idx[q] : q;
        const int i = rows ? __ldg(rows + r) : r;
        const float xi = xt[i];
        if (xi == 0.0f) continue;  // the same on every lane of the team
        for (int k = __ldg(W.ptr + i) + lane, k1 = __ldg(W.ptr + i + 1); k < k1; k += team_n) {
          const int j = __ldg(W.col + k) - c0;
          if (j >= 0 && j < ncols) yt[j] += xi * __ldg(W.val + k);
        }
        team_sync();
      }
    }
    if (listed) g.sync();  // every lane is done with the list before the next tile rewrites it
  }
  g.sync();
}

// Y[t, j] (+)= bias[j] + sum over rows r of X[t, r] * W[r, c0 + j], for t < T, j < ncols. rows == null means
// every row in [0, nrows). X and Y are scratch (shared or global), W a read-only weight matrix (dense or
// CSR). Ends with a barrier.
__device__ void mm(const Grp& g, const float* X, int ldx, int T, const MatDev& mat, int c0, int ncols,
                   const int* __restrict__ rows, int nrows, const float* __restrict__ bias, float* Y, int ldy,
                   bool accumulate, bool resid_in = false) {
  // By default only matmuls reading the residual stream (resid_in: the sparsest inputs) list rows; attention
  // z and MLP hidden rows are denser, and listing them cost more than it saved on shuffle_dyck2 (H200, run 3).
  // Lists shorter than kSkipMin rows are not worth the extra pass.
  constexpr int kSkipMin = 16;
  const bool skip = g.warp && g.idx != nullptr && nrows >= kSkipMin && (resid_in || g.skip_all);
  if (!mat.w) {
    mm_sparse(g, X, ldx, T, mat, c0, ncols, rows, nrows, bias, Y, ldy, accumulate, skip);
    return;
  }
  // Dense rows: row rows[r] of the matrix is row base + r of the array (uploaded matrices keep only their
  // non-zero rows, and `rows` points into their list; the plan's projections are whole: rows null, base 0).
  const float* __restrict__ W = mat.w + c0;
  const int ldw = mat.ld;
  const int base = rows && mat.rows ? static_cast<int>(rows - mat.rows) : 0;
  if (g.warp) {
    // Warp mode: a lane owns columns and keeps kTile positions in registers, so that each weight and row
    // index is loaded once per kTile positions (not once per position) and kTile independent sums give
    // the lane instruction-level parallelism. Same terms in the same order as below: same results.
    // With row skipping the loop runs over the listed rows only: the skipped terms are exact zeros.
    constexpr int kTile = 8;
    for (int t0 = 0; t0 < T; t0 += kTile) {
      const int tn = T - t0 < kTile ? T - t0 : kTile;
      const float* x0 = X + static_cast<size_t>(t0) * ldx;
      const int n = skip ? list_rows(g, x0, ldx, tn, rows, nrows) : nrows;
      for (int j = g.tid; j < ncols; j += g.n) {
        float s[kTile];
        RASP_UNROLL
        for (int u = 0; u < kTile; ++u)  // slots past the last position repeat it; their sums are dropped
          s[u] = start_value(Y, ldy, t0 + (u < tn ? u : tn - 1), j, bias, accumulate);
        for (int q = 0; q < n; ++q) {
          const int r = skip ? g.idx[q] : q;  // the list is in shared memory: no __ldg
          const int i = rows ? __ldg(rows + r) : r;
          const float w = __ldg(W + static_cast<size_t>(base + r) * ldw + j);
          RASP_UNROLL
          for (int u = 0; u < kTile; ++u) s[u] += x0[static_cast<size_t>(u < tn ? u : tn - 1) * ldx + i] * w;
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
    float s = start_value(Y, ldy, t, j, bias, accumulate);
    const float* xt = X + static_cast<size_t>(t) * ldx;
    for (int r = 0; r < nrows; ++r) {
      const int i = rows ? __ldg(rows + r) : r;
      s += xt[i] * __ldg(W + static_cast<size_t>(base + r) * ldw + j);
    }
    Y[t * ldy + j] = s;
  }
  g.sync();
}

// A dense [rows, ld] matrix (the plan's projection matrices).
__device__ inline MatDev dense_mat(const float* w, int ld) {
  return MatDev{w, ld, nullptr, 0, nullptr, nullptr, nullptr};
}

__device__ void copy_block(const Grp& g, float* dst, const float* src, int n) {
  for (int i = g.tid; i < n; i += g.n) dst[i] = src[i];
}

// Softmax attention of every (active) head: qkv [T, 3HE] -> z [T, HE], scores/probabilities in P [H, T, T].
// PAD keys, and keys after the query when causal, get -inf scores. Scores sum over the head's qk columns
// only, and z is zero where v's column is (the other terms are exact zeros: the same sums as over all E).
__device__ void attention(const Grp& g, const float* qkv, int T, int H, int E, const int32_t* tok, int pad,
                          int causal, const LayerDev& Ld, bool all_heads, float* P, float* z,
                          float* rec_scores, float* rec_pattern) {
  const unsigned char* __restrict__ active = Ld.active;
  const int ld = 3 * H * E, HE = H * E, TT = T * T;
  const float neg_inf = -INFINITY;
  for (int idx = g.tid; idx < H * TT; idx += g.n) {
    const int h = idx / TT, r = idx - h * TT, i = r / T, j = r - i * T;
    if (!all_heads && !active[h]) continue;
    float s;
    if ((causal && j > i) || (pad >= 0 && tok[j] == pad)) {
      s = neg_inf;
    } else {
      const float* qi = qkv + i * ld + h * E;
      const float* kj = qkv + j * ld + HE + h * E;
      s = 0.0f;
      for (int c = __ldg(Ld.qk_off + h), c1 = __ldg(Ld.qk_off + h + 1); c < c1; ++c) {
        const int e = __ldg(Ld.qk_cols + c);
        s += qi[e] * kj[e];
      }
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
    if ((!all_heads && !active[h]) || !Ld.v_live[h * E + e]) {
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
    mm(g, diff, D, TD / D, dense_mat(P, D), 0, D, nullptr, D, nullptr, dst, D, true);
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
    mm(g, diff, D, TD / D, dense_mat(P, D), 0, D, nullptr, D, nullptr, v, D, true);
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


}  // namespace
}  // namespace rasp::cuda
