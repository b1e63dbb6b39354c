#include "engine/cpu_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/parallel.h"

namespace rasp {

namespace {

using Edges = std::vector<std::pair<int32_t, int32_t>>;

// (n may be 0 with null pointers: zero-width MLPs exist, and memcpy/memset must not see null)
inline void copy_n(float* dst, const float* src, size_t n) {
  if (n) std::memcpy(dst, src, n * sizeof(float));
}
inline void zero_n(float* dst, size_t n) {
  if (n) std::memset(dst, 0, n * sizeof(float));
}
inline void add_n(float* dst, const float* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] += src[i];
}

// Per-worker buffers, sized once per call for the largest shapes.
struct Scratch {
  std::vector<float> x, qkv, q, k, v, z, srow, acc, in, pre, delta, diff, writers, dq, dk, dv, dpre, dout;
  std::vector<const float*> cur;
  void ensure(const ModelDims& d, int T) {
    const size_t TD = static_cast<size_t>(T) * d.d_model, TE = static_cast<size_t>(T) * d.d_head;
    x.resize(TD);
    qkv.resize(static_cast<size_t>(T) * 3 * d.n_heads * d.d_head);
    q.resize(TE);
    k.resize(TE);
    v.resize(TE);
    z.resize(TE);
    srow.resize(T);
    acc.resize(TD);
    in.resize(TD);
    pre.resize(static_cast<size_t>(T) * d.d_mlp);
    delta.resize(TD);
    diff.resize(TD);
    writers.resize(static_cast<size_t>(d.n_writers()) * TD);
    dq.resize(TE);
    dk.resize(TE);
    dv.resize(TE);
    dpre.resize(static_cast<size_t>(T) * d.d_mlp);
    dout.resize(static_cast<size_t>(T) * d.d_vocab_out);
    cur.resize(d.n_writers());
  }
  float* slot(int w, size_t TD) { return writers.data() + static_cast<size_t>(w) * TD; }
};

// Softmax attention of one head over one sequence: q, k, v [T, E] -> z [T, E]. Keys that are PAD, and
// keys after the query when causal, get -inf scores. Optionally records the scores and the pattern as [T, T].
// Scores sum over the head's qk columns and z over its v columns only: the other terms are exact zeros.
void head_attention(const float* q, const float* k, const float* v, int T, int E, const HeadColumns& cols,
                    const int32_t* tok, int pad, bool causal, float* srow, float* z, float* scores_out,
                    float* pattern_out) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < T; ++i) {
    const float* qi = q + static_cast<size_t>(i) * E;
    float mx = neg_inf;
    for (int j = 0; j < T; ++j) {
      float s;
      if ((causal && j > i) || (pad >= 0 && tok[j] == pad)) {
        s = neg_inf;
      } else {
        const float* kj = k + static_cast<size_t>(j) * E;
        s = 0.0f;
        for (int32_t e : cols.qk) s += qi[e] * kj[e];
      }
      srow[j] = s;
      mx = std::max(mx, s);
    }
    if (scores_out) copy_n(scores_out + static_cast<size_t>(i) * T, srow, T);
    if (mx == neg_inf) {  // every key masked: nothing to attend to
      for (int j = 0; j < T; ++j) srow[j] = 0.0f;
    } else {
      float sum = 0.0f;
      for (int j = 0; j < T; ++j) {
        const float p = srow[j] == neg_inf ? 0.0f : std::exp(srow[j] - mx);
        srow[j] = p;
        sum += p;
      }
      const float inv = 1.0f / sum;
      for (int j = 0; j < T; ++j) srow[j] *= inv;
    }
    if (pattern_out) copy_n(pattern_out + static_cast<size_t>(i) * T, srow, T);
    float* zi = z + static_cast<size_t>(i) * E;
    zero_n(zi, E);
    for (int j = 0; j < T; ++j) {
      const float p = srow[j];
      if (p == 0.0f) continue;
      const float* vj = v + static_cast<size_t>(j) * E;
      for (int32_t e : cols.v) zi[e] += p * vj[e];
    }
  }
}

// y[t] = b + x[t] @ W for t in [0, T).
void affine_rows(const SparseMat& W, const float* bias, const float* x, float* y, int T) {
  for (int t = 0; t < T; ++t) {
    float* yt = y + static_cast<size_t>(t) * W.cols;
    if (bias) copy_n(yt, bias, W.cols);
    else zero_n(yt, W.cols);
    W.accumulate(x + static_cast<size_t>(t) * W.rows, yt);
  }
}

// Copies head h's q, k, v ([T, E] each) out of the fused [T, 3*H*E] buffer.
void split_head(const float* qkv, int T, int H, int E, int h, float* q, float* k, float* v) {
  const size_t row = static_cast<size_t>(3) * H * E;
  for (int t = 0; t < T; ++t) {
    const float* r = qkv + t * row;
    copy_n(q + static_cast<size_t>(t) * E, r + (0 * H + h) * E, E);
    copy_n(k + static_cast<size_t>(t) * E, r + (1 * H + h) * E, E);
    copy_n(v + static_cast<size_t>(t) * E, r + (2 * H + h) * E, E);
  }
}

// MLP on rows `in` [T, D] -> out [T, D] (includes b_out); pre/post [T, M] optionally recorded.
void mlp_rows(const LayerWeights& L, const float* in, float* pre, float* out, int T, int D, int M,
              float* rec_pre, float* rec_post) {
  affine_rows(L.w_in, L.b_in.data(), in, pre, T);
  if (rec_pre) copy_n(rec_pre, pre, static_cast<size_t>(T) * M);
  for (size_t i = 0; i < static_cast<size_t>(T) * M; ++i) pre[i] = pre[i] > 0.0f ? pre[i] : 0.0f;
  if (rec_post) copy_n(rec_post, pre, static_cast<size_t>(T) * M);
  affine_rows(L.w_out, L.b_out.data(), pre, out, T);
  (void)D;
}

// One sequence, unpatched. Records activations of item b into rec and into cache when given.
void forward_one(const Model& m, const int32_t* tok, int T, int b, Scratch& s, float* out, const Record* rec,
                 RunCache* cache) {
  const ModelDims& d = m.dims;
  const int D = d.d_model, H = d.n_heads, E = d.d_head, M = d.d_mlp, V = d.d_vocab_out;
  const size_t TD = static_cast<size_t>(T) * D;
  float* x = s.x.data();
  float* emb_slot = cache ? const_cast<float*>(cache->writer(b, 0)) : nullptr;
  float* pos_slot = cache ? const_cast<float*>(cache->writer(b, 1)) : nullptr;
  for (int t = 0; t < T; ++t) {
    const float* e = m.w_e.data() + static_cast<size_t>(tok[t]) * D;
    const float* p = m.w_pos.data() + static_cast<size_t>(t) * D;
    float* xt = x + static_cast<size_t>(t) * D;
    for (int j = 0; j < D; ++j) xt[j] = e[j] + p[j];
    if (rec && rec->embed) copy_n(rec->embed + b * TD + t * D, e, D);
    if (rec && rec->pos_embed) copy_n(rec->pos_embed + b * TD + t * D, p, D);
    if (emb_slot) copy_n(emb_slot + t * D, e, D);
    if (pos_slot) copy_n(pos_slot + t * D, p, D);
  }
  for (int l = 0; l < d.n_layers; ++l) {
    const LayerWeights& L = m.layers[l];
    const LayerRecord* r = (rec && !rec->layers.empty()) ? &rec->layers[l] : nullptr;
    if (r && r->resid_pre) copy_n(r->resid_pre + b * TD, x, TD);
    if (cache) copy_n(const_cast<float*>(cache->pre(b, l)), x, TD);
    const bool record_attn = r && r->any_attention();
    bool any_head = record_attn;
    for (int h = 0; h < H && !any_head; ++h) any_head = L.head_active[h];
    if (any_head) affine_rows(L.qkv, L.bqkv.data(), x, s.qkv.data(), T);
    const bool inner = cache && cache->keep_inner;
    if (inner) {
      float* dst = const_cast<float*>(cache->qkv_of(b, l));
      if (any_head) copy_n(dst, s.qkv.data(), T * cache->qkv_width());
      else zero_n(dst, T * cache->qkv_width());  // never read: only active heads are recomputed
    }
    float* acc = s.acc.data();
    for (int t = 0; t < T; ++t) copy_n(acc + static_cast<size_t>(t) * D, L.b_o.data(), D);
    for (int h = 0; h < H; ++h) {
      float* res = cache ? const_cast<float*>(cache->writer(b, d.head_writer(l, h))) : s.in.data();
      if (!L.head_active[h] && !record_attn) {
        if (cache) zero_n(res, TD);
        continue;
      }
      split_head(s.qkv.data(), T, H, E, h, s.q.data(), s.k.data(), s.v.data());
      float* sc = (r && r->scores) ? r->scores + (static_cast<size_t>(b) * H + h) * T * T : nullptr;
      float* pt = (r && r->pattern) ? r->pattern + (static_cast<size_t>(b) * H + h) * T * T : nullptr;
      head_attention(s.q.data(), s.k.data(), s.v.data(), T, E, L.cols[h], tok, d.pad_token_id, d.causal,
                     s.srow.data(), s.z.data(), sc, pt);
      affine_rows(L.wo[h], nullptr, s.z.data(), res, T);
      if (r) {
        auto put_thd = [&](float* dst, const float* src, int width) {
          if (!dst) return;
          for (int t = 0; t < T; ++t)
            copy_n(dst + ((static_cast<size_t>(b) * T + t) * H + h) * width, src + static_cast<size_t>(t) * width,
                   width);
        };
        put_thd(r->q, s.q.data(), E);
        put_thd(r->k, s.k.data(), E);
        put_thd(r->v, s.v.data(), E);
        put_thd(r->z, s.z.data(), E);
        put_thd(r->result, res, D);
      }
      add_n(acc, res, TD);
    }
    if (r && r->attn_out) copy_n(r->attn_out + b * TD, acc, TD);
    add_n(x, acc, TD);
    if (r && r->resid_mid) copy_n(r->resid_mid + b * TD, x, TD);
    if (cache) copy_n(const_cast<float*>(cache->mid(b, l)), x, TD);
    float* mo = cache ? const_cast<float*>(cache->writer(b, d.mlp_writer(l))) : s.delta.data();
    const size_t TM = static_cast<size_t>(T) * M;
    float* keep_pre = inner ? const_cast<float*>(cache->mlp_pre_of(b, l)) : nullptr;
    mlp_rows(L, x, s.pre.data(), mo, T, D, M, (r && r->mlp_pre) ? r->mlp_pre + b * TM : keep_pre,
             (r && r->mlp_post) ? r->mlp_post + b * TM : nullptr);
    if (keep_pre && r && r->mlp_pre) copy_n(keep_pre, r->mlp_pre + b * TM, TM);
    if (r && r->mlp_out) copy_n(r->mlp_out + b * TD, mo, TD);
    add_n(x, mo, TD);
    if (r && r->resid_post) copy_n(r->resid_post + b * TD, x, TD);
  }
  if (cache) copy_n(const_cast<float*>(cache->pre(b, d.n_layers)), x, TD);
  affine_rows(m.w_u, m.b_u.data(), x, out, T);
  (void)V;
}

// delta[t] += proj(src[t] - cur[t]) over all rows.
void add_projected_diff(const Projections& proj, int p, const float* src, const float* cur, float* delta, int T,
                        int D, float* diff) {
  const size_t TD = static_cast<size_t>(T) * D;
  if (p == kWholeOutput) {
    for (size_t i = 0; i < TD; ++i) delta[i] += src[i] - cur[i];
  } else if (p < proj.n_diag) {
    const float* w = proj.diag + static_cast<size_t>(p) * D;
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < D; ++j) delta[t * D + j] += w[j] * (src[t * D + j] - cur[t * D + j]);
  } else {
    const float* P = proj.mat + static_cast<size_t>(p - proj.n_diag) * D * D;
    for (size_t i = 0; i < TD; ++i) diff[i] = src[i] - cur[i];
    for (int t = 0; t < T; ++t) {
      const float* dt = diff + static_cast<size_t>(t) * D;
      float* yt = delta + static_cast<size_t>(t) * D;
      for (int i = 0; i < D; ++i) {
        const float di = dt[i];
        if (di == 0.0f) continue;
        const float* row = P + static_cast<size_t>(i) * D;
        for (int j = 0; j < D; ++j) yt[j] += di * row[j];
      }
    }
  }
}

// delta = sum over edges of proj(source_w - current_w); returns false (delta untouched) when no edges.
bool edge_delta(const Edges& edges, const RunCache& source, int b, Scratch& s, const Projections& proj, int T,
                int D) {
  if (edges.empty()) return false;
  const size_t TD = static_cast<size_t>(T) * D;
  zero_n(s.delta.data(), TD);
  for (const auto& [w, p] : edges)
    add_projected_diff(proj, p, source.writer(b, w), s.cur[w], s.delta.data(), T, D, s.diff.data());
  return true;
}

// Node patch of writer w: its current output becomes current + proj(source - current), in its slot.
void apply_node_patch(int w, int p, const RunCache& source, int b, Scratch& s, const Projections& proj, int T,
                      int D) {
  const size_t TD = static_cast<size_t>(T) * D;
  float* slot = s.slot(w, TD);
  const float* base = s.cur[w];
  if (base != slot) copy_n(slot, base, TD);
  // slot now holds current; add proj(source - current) computed from a copy of current
  copy_n(s.in.data(), slot, TD);
  add_projected_diff(proj, p, source.writer(b, w), s.in.data(), slot, T, D, s.diff.data());
  s.cur[w] = slot;
}

// rows[t] = delta[t] @ W for t in [0, T); returns whether any entry is nonzero.
bool delta_product(const SparseMat& W, const float* delta, float* rows, int T) {
  affine_rows(W, nullptr, delta, rows, T);
  const size_t n = static_cast<size_t>(T) * W.cols;
  for (size_t i = 0; i < n; ++i)
    if (rows[i] != 0.0f) return true;
  return false;
}

bool same_values(const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// One sequence under one patch plan; returns its output [T, V]: `out`, or the clean cache's row when
// the patches changed nothing.
//
// Exactness-preserving shortcuts (compiled weights are sparse, so most edges carry nothing):
//  * reader inputs are handled by linearity: q = (x + delta) W + b = (x W + b) + delta W, and when
//    delta W is exactly zero the reader is not recomputed at all;
//  * a recomputed component whose output equals its clean output bit for bit counts as unchanged;
//  * while nothing has changed ("clean" residual), sublayers are copied from the clean cache.
const float* patched_one(const Model& m, const int32_t* tok, int T, int b, const PatchPlan& plan, const Projections& proj,
                 const RunCache& clean, const RunCache& source, Scratch& s, float* out) {
  const ModelDims& d = m.dims;
  const int D = d.d_model, H = d.n_heads, E = d.d_head, M = d.d_mlp;
  const size_t TD = static_cast<size_t>(T) * D, TE = static_cast<size_t>(T) * E, TM = static_cast<size_t>(T) * M;
  for (int w = 0; w < d.n_writers(); ++w) s.cur[w] = clean.writer(b, w);
  // after a component is final: if its value equals the clean one, point back at the clean copy
  auto settle = [&](int w) -> bool {
    const float* cw = clean.writer(b, w);
    if (s.cur[w] != cw && same_values(s.cur[w], cw, TD)) s.cur[w] = cw;
    return s.cur[w] != cw;
  };
  // The residual is read through xr: a view of the clean cache while nothing has changed, else the
  // private buffer x (copied in on the first change), so unchanged layers cost no copies.
  float* x = s.x.data();
  const int start = plan.start_layer;
  const float* xr = clean.pre(b, start);
  auto writable = [&]() {
    if (xr != x) {
      copy_n(x, xr, TD);
      xr = x;
    }
  };
  bool dirty = false;  // does the residual differ from the clean one?
  for (int w = 0; w < 2; ++w) {
    if (plan.node_proj[w] == kNoPatch) continue;
    const float* before = s.cur[w];
    apply_node_patch(w, plan.node_proj[w], source, b, s, proj, T, D);
    if (settle(w)) {
      writable();
      for (size_t i = 0; i < TD; ++i) x[i] += s.cur[w][i] - before[i];
      dirty = true;
    }
  }
  for (int l = start; l < d.n_layers; ++l) {
    const LayerWeights& L = m.layers[l];
    // ---- attention sublayer
    if (!dirty && !plan.attn_touched[l]) {
      xr = clean.mid(b, l);
    } else {
      bool changed = false, qkv_ready = false;
      const float* qkv_src = s.qkv.data();
      float* acc = s.acc.data();
      for (int t = 0; t < T; ++t) copy_n(acc + static_cast<size_t>(t) * D, L.b_o.data(), D);
      for (int h = 0; h < H; ++h) {
        const int w = d.head_writer(l, h), r = d.head_reader(l, h);
        const Edges* lists[3] = {&plan.edges_into(r, kInputQ), &plan.edges_into(r, kInputK),
                                 &plan.edges_into(r, kInputV)};
        const SparseMat* mats[3] = {&L.wq[h], &L.wk[h], &L.wv[h]};
        float* dprod[3] = {s.dq.data(), s.dk.data(), s.dv.data()};
        bool has_delta[3] = {false, false, false};
        bool recompute = false;
        if (L.head_active[h]) {
          recompute = dirty;
          for (int i = 0; i < 3; ++i) {
            if (!edge_delta(*lists[i], source, b, s, proj, T, D)) continue;
            has_delta[i] = delta_product(*mats[i], s.delta.data(), dprod[i], T);
            recompute = recompute || has_delta[i];
          }
        }
        if (recompute) {
          if (!qkv_ready) {
            // a clean residual here: the clean run's projection is the same computation's result
            if (!dirty && clean.has_inner()) qkv_src = clean.qkv_of(b, l);
            else affine_rows(L.qkv, L.bqkv.data(), xr, s.qkv.data(), T);
            qkv_ready = true;
          }
          split_head(qkv_src, T, H, E, h, s.q.data(), s.k.data(), s.v.data());
          float* dsts[3] = {s.q.data(), s.k.data(), s.v.data()};
          for (int i = 0; i < 3; ++i)
            if (has_delta[i]) add_n(dsts[i], dprod[i], TE);
          head_attention(s.q.data(), s.k.data(), s.v.data(), T, E, L.cols[h], tok, d.pad_token_id, d.causal,
                         s.srow.data(), s.z.data(), nullptr, nullptr);
          float* slot = s.slot(w, TD);
          affine_rows(L.wo[h], nullptr, s.z.data(), slot, T);
          s.cur[w] = slot;
        }
        if (plan.node_proj[w] != kNoPatch) apply_node_patch(w, plan.node_proj[w], source, b, s, proj, T, D);
        changed = settle(w) || changed;
        add_n(acc, s.cur[w], TD);
      }
      if (changed || dirty) {
        writable();
        add_n(x, acc, TD);  // b_O plus every head's current output
        dirty = true;
      } else {
        xr = clean.mid(b, l);
      }
    }
    // ---- MLP sublayer
    const int w = d.mlp_writer(l), r = d.mlp_reader(l);
    if (!dirty && !plan.mlp_touched[l]) {
      xr = clean.pre(b, l + 1);
      continue;
    }
    bool has_delta = false;
    if (M > 0 && edge_delta(plan.edges_into(r, kInputIn), source, b, s, proj, T, D))
      has_delta = delta_product(L.w_in, s.delta.data(), s.dpre.data(), T);
    if (dirty || has_delta) {
      if (!dirty && clean.has_inner()) copy_n(s.pre.data(), clean.mlp_pre_of(b, l), TM);
      else affine_rows(L.w_in, L.b_in.data(), xr, s.pre.data(), T);
      if (has_delta) add_n(s.pre.data(), s.dpre.data(), TM);
      for (size_t i = 0; i < TM; ++i) s.pre[i] = s.pre[i] > 0.0f ? s.pre[i] : 0.0f;
      float* slot = s.slot(w, TD);
      affine_rows(L.w_out, L.b_out.data(), s.pre.data(), slot, T);
      s.cur[w] = slot;
    }
    if (plan.node_proj[w] != kNoPatch) apply_node_patch(w, plan.node_proj[w], source, b, s, proj, T, D);
    if (settle(w) || dirty) {
      writable();
      add_n(x, s.cur[w], TD);
      dirty = true;
    } else {
      xr = clean.pre(b, l + 1);
    }
  }
  const int V = d.d_vocab_out;
  bool out_delta = false;
  if (edge_delta(plan.edges_into(d.output_reader(), kInputIn), source, b, s, proj, T, D))
    out_delta = delta_product(m.w_u, s.delta.data(), s.dout.data(), T);
  if (!dirty && !out_delta) return clean.output(b);  // bit-identical to the clean output
  affine_rows(m.w_u, m.b_u.data(), xr, out, T);
  if (out_delta) add_n(out, s.dout.data(), static_cast<size_t>(T) * V);
  return out;
}

int argmax_row(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

// Log-softmax and softmax (float64) of each row of a clean output [T, V]: KL's clean side, computed
// once per sequence instead of once per patch set.
void clean_log_probs(const float* clean, int T, int V, double* lp, double* p) {
  for (int t = 0; t < T; ++t) {
    const float* c = clean + static_cast<size_t>(t) * V;
    double mc = c[0];
    for (int i = 1; i < V; ++i) mc = std::max(mc, static_cast<double>(c[i]));
    double zc = 0.0;
    for (int i = 0; i < V; ++i) zc += std::exp(c[i] - mc);
    const double lzc = std::log(zc) + mc;
    for (int i = 0; i < V; ++i) {
      lp[static_cast<size_t>(t) * V + i] = c[i] - lzc;
      p[static_cast<size_t>(t) * V + i] = std::exp(c[i] - lzc);
    }
  }
}

// Metric of one patched sequence against the clean (and source) outputs, summed over counted positions.
// For KL, clean_lp / clean_p are clean_log_probs of `clean`.
void sequence_metric(Metric metric, float atol, const float* patched, const float* clean, const float* source,
                     const double* clean_lp, const double* clean_p, const int32_t* tok, int T, int V, int pad,
                     float* sum_out, float* count_out) {
  double sum = 0.0, count = 0.0;
  if (patched == clean && metric != Metric::kLogitDiff) {  // unchanged run: KL = MSE = 0, accuracy = 1
    for (int t = 1; t < T; ++t)
      if (!(pad >= 0 && tok[t] == pad)) count += 1.0;
    *sum_out = metric == Metric::kAccuracy ? static_cast<float>(count) : 0.0f;
    *count_out = metric == Metric::kNone ? 0.0f : static_cast<float>(count);
    return;
  }
  for (int t = 1; t < T; ++t) {
    if (pad >= 0 && tok[t] == pad) continue;
    const float* p = patched + static_cast<size_t>(t) * V;
    const float* c = clean + static_cast<size_t>(t) * V;
    switch (metric) {
      case Metric::kKL: {  // KL(softmax(clean) || softmax(patched))
        const double* lcs = clean_lp + static_cast<size_t>(t) * V;
        const double* pcs = clean_p + static_cast<size_t>(t) * V;
        double mp = p[0];
        for (int i = 1; i < V; ++i) mp = std::max(mp, static_cast<double>(p[i]));
        double zp = 0.0;
        for (int i = 0; i < V; ++i) zp += std::exp(p[i] - mp);
        const double lzp = std::log(zp) + mp;
        double kl = 0.0;
        for (int i = 0; i < V; ++i) {
          const double lp = p[i] - lzp;
          kl += pcs[i] * (lcs[i] - lp);
        }
        sum += std::max(kl, 0.0);
        count += 1.0;
        break;
      }
      case Metric::kLogitDiff: {  // patched logit of the clean answer minus that of the source answer
        const int yc = argmax_row(c, V), ys = argmax_row(source + static_cast<size_t>(t) * V, V);
        if (yc == ys) break;
        sum += static_cast<double>(p[yc]) - p[ys];
        count += 1.0;
        break;
      }
      case Metric::kAccuracy: {
        if (V == 1) sum += std::fabs(p[0] - c[0]) <= atol ? 1.0 : 0.0;
        else sum += argmax_row(p, V) == argmax_row(c, V) ? 1.0 : 0.0;
        count += 1.0;
        break;
      }
      case Metric::kMSE: {
        double se = 0.0;
        for (int i = 0; i < V; ++i) se += (static_cast<double>(p[i]) - c[i]) * (static_cast<double>(p[i]) - c[i]);
        sum += se / V;
        count += 1.0;
        break;
      }
      case Metric::kNone:
        break;
    }
  }
  *sum_out = static_cast<float>(sum);
  *count_out = static_cast<float>(count);
}

}  // namespace

void RunCache::allocate(const ModelDims& d, int batch, int seq, bool zero) {
  dims = d;
  B = batch;
  T = seq;
  const size_t TD = static_cast<size_t>(seq) * d.d_model;
  auto size = [zero](std::vector<float>& v, size_t n) {
    if (zero) v.assign(n, 0.0f);
    else v.resize(n);
  };
  size(writer_out, static_cast<size_t>(batch) * d.n_writers() * TD);
  size(resid_pre, static_cast<size_t>(batch) * (d.n_layers + 1) * TD);
  size(resid_mid, static_cast<size_t>(batch) * d.n_layers * TD);
  size(out, static_cast<size_t>(batch) * seq * d.d_vocab_out);
  if (keep_inner) {
    size(qkv, static_cast<size_t>(batch) * d.n_layers * seq * 3 * d.n_heads * d.d_head);
    size(mlp_pre, static_cast<size_t>(batch) * d.n_layers * seq * d.d_mlp);
  } else {
    qkv.clear();
    mlp_pre.clear();
  }
}

void forward_cpu(const Model& m, const int32_t* tokens, int B, int T, float* out, const Record* rec,
                 RunCache* cache, int threads) {
  if (B <= 0 || T <= 0) return;
  if (cache) cache->allocate(m.dims, B, T);
  const int nw = worker_count(B, threads);
  std::vector<Scratch> scratch(nw);
  for (auto& s : scratch) s.ensure(m.dims, T);
  const size_t TV = static_cast<size_t>(T) * m.dims.d_vocab_out;
  parallel_for_worker(B, threads, [&](int64_t b, int w) {
    float* ob = out ? out + b * TV : cache->out.data() + b * TV;
    forward_one(m, tokens + b * T, T, static_cast<int>(b), scratch[w], ob, rec, cache);
    if (cache && out) copy_n(cache->out.data() + b * TV, ob, TV);
  });
}

void sweep_cpu(const Model& m, const int32_t* tokens, int B, int T, const RunCache& clean,
               const RunCache& source, const std::vector<PatchPlan>& plans, const Projections& proj,
               Metric metric, float atol, float* metric_sum, float* metric_count, float* outs, int threads) {
  const int64_t S = static_cast<int64_t>(plans.size());
  const int64_t n = S * B;
  if (n == 0 || T <= 0) return;
  const int nw = worker_count(n, threads);
  const int V = m.dims.d_vocab_out;
  const size_t TV = static_cast<size_t>(T) * V;
  std::vector<Scratch> scratch(nw);
  std::vector<std::vector<float>> outbuf(nw, std::vector<float>(TV));
  for (auto& s : scratch) s.ensure(m.dims, T);
  std::vector<double> clean_lp, clean_p;  // KL's clean side per item [B][T][V], shared by every plan
  if (metric == Metric::kKL) {
    clean_lp.resize(static_cast<size_t>(B) * TV);
    clean_p.resize(static_cast<size_t>(B) * TV);
    for (int b = 0; b < B; ++b) clean_log_probs(clean.output(b), T, V, clean_lp.data() + b * TV, clean_p.data() + b * TV);
  }
  parallel_for_worker(n, threads, [&](int64_t i, int w) {
    const int64_t si = i / B;
    const int b = static_cast<int>(i % B);
    float* o = outs ? outs + i * TV : outbuf[w].data();
    const float* got =
        patched_one(m, tokens + static_cast<int64_t>(b) * T, T, b, plans[si], proj, clean, source, scratch[w], o);
    if (outs && got != o) copy_n(o, got, TV);
    if (metric != Metric::kNone)
      sequence_metric(metric, atol, got, clean.output(b), source.output(b),
                      clean_lp.empty() ? nullptr : clean_lp.data() + b * TV,
                      clean_p.empty() ? nullptr : clean_p.data() + b * TV, tokens + static_cast<int64_t>(b) * T, T,
                      V, m.dims.pad_token_id, metric_sum + i, metric_count + i);
  });
}

}  // namespace rasp
