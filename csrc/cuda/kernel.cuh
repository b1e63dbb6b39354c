// The fused kernel: one launch runs forward passes, cached runs and patched sweeps; block mode (a block
// per item) or warp mode (a warp per item), chosen per launch by DeviceState::launch (engine.cu).
#pragma once

#include "cuda/block_ops.cuh"
#include "cuda/device_types.cuh"

namespace rasp::cuda {
namespace {

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
        mm(g, x, D, T, Ld.qkv, 0, 3 * HE, Ld.qkv.rows, Ld.qkv.n_rows, Ld.bqkv, qkv, 3 * HE, false, true);
        if (patched) {
          for (int h = 0; h < H; ++h) {
            if (!Ld.active[h]) continue;  // an inactive head's output is 0 whatever its inputs
            const int reader = l * (H + 1) + h;
            for (int mi = 0; mi < 3; ++mi) {
              if (!edge_delta(reader, mi, inb)) continue;
              const int c0 = (mi * H + h) * E;
              mm(g, inb, D, T, Ld.qkv, c0, E, Ld.qkv.rows, Ld.qkv.n_rows, nullptr, qkv + c0, 3 * HE, true, true);
            }
          }
        }
        float* sc = rec(l, kRecScores);
        float* pt = rec(l, kRecPattern);
        attention(g, qkv, T, H, E, tok, m.pad, m.causal, Ld, rec_attn, P, z,
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
        mm(g, z, HE, T, Ld.wo, 0, D, Ld.wo.rows, Ld.wo.n_rows, Ld.bo, acc, D, false);
      } else {
        for (int i = g.tid; i < TD; i += g.n) acc[i] = __ldg(Ld.bo + i % D);
        for (int h = 0; h < H; ++h) {
          const int r0 = Ld.wo_head_off[h], r1 = Ld.wo_head_off[h + 1];
          // the head's slice of W_O's row list (global rows of [HE, D]); X = z with the same column indexing
          mm(g, z, HE, T, Ld.wo, 0, D, Ld.wo.rows + r0, r1 - r0, nullptr, res, D, false);
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
      mm(g, in, D, T, Ld.win, 0, M, Ld.win.rows, Ld.win.n_rows, Ld.bin, hid, M, false, true);
      const size_t bTM = static_cast<size_t>(b) * T * M;
      if (float* r = rec(l, kRecMlpPre)) copy_block(g, r + bTM, hid, T * M);
      g.sync();
      for (int i = g.tid; i < T * M; i += g.n) hid[i] = hid[i] > 0.0f ? hid[i] : 0.0f;
      g.sync();
      if (float* r = rec(l, kRecMlpPost)) copy_block(g, r + bTM, hid, T * M);
      mm(g, hid, M, T, Ld.wout, 0, D, Ld.wout.rows, Ld.wout.n_rows, Ld.bout, acc, D, false);
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
    mm(g, fin, D, T, m.u, 0, V, m.u.rows, m.u.n_rows, m.b_u, logits, V, false, true);
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


}  // namespace
}  // namespace rasp::cuda
