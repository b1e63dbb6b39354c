#include "engine/feature_major.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "common/parallel.h"

// The vector loops also get AVX-512 and AVX2 versions, picked at load time by what the CPU has (built
// with -ffp-contract=off: the products and sums stay the ones the per-sequence path computes).
#if defined(__GNUC__) && defined(__x86_64__)
#define RASP_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RASP_VECTOR_CLONES
#endif

namespace rasp {

namespace {

// How many multiply-adds the axpy does in the time the scan takes for one (vector width, roughly).
constexpr int64_t kVectorWidth = 4;
// Target size of one feature-major buffer, in floats: rows per chunk are chosen to keep buffers in cache.
constexpr int64_t kChunkFloats = int64_t{1} << 16;

// Packs W (dense [rows, cols] row-major) to the columns `keep` (ascending), renumbering input row i to
// row_map[i] (dropped when -1); out[c] = out_ids[c]. Rows without a non-zero in a kept column are dropped.
PackedMat pack(const SparseMat& W, const float* bias, const std::vector<int32_t>& keep,
               const std::vector<int32_t>& out_ids, const std::vector<int32_t>& row_map) {
  PackedMat p;
  p.out = out_ids;
  p.bias.resize(keep.size());
  for (size_t c = 0; c < keep.size(); ++c) p.bias[c] = bias ? bias[keep[c]] : 0.0f;
  std::vector<int32_t> packed(W.cols, -1);
  for (size_t c = 0; c < keep.size(); ++c) packed[keep[c]] = static_cast<int32_t>(c);
  p.ptr.push_back(0);
  for (int32_t i : W.nz_rows) {
    if (row_map[i] < 0) continue;
    const size_t start = p.col.size();
    for (int32_t k = W.row_ptr[i]; k < W.row_ptr[i + 1]; ++k) {  // ascending columns, so ascending c
      if (packed[W.col[k]] < 0) continue;
      p.col.push_back(packed[W.col[k]]);
      p.val.push_back(W.val[k]);
    }
    if (p.col.size() == start) continue;
    p.in.push_back(row_map[i]);
    p.ptr.push_back(static_cast<int32_t>(p.col.size()));
  }
  // Cost per activation row: the axpy multiplies every weight (vectorised); the scan looks at every input
  // feature and, if the inputs are one-hot (one of n_in non-zero), multiplies one row of weights.
  const int64_t nnz = static_cast<int64_t>(p.col.size()), n_in = static_cast<int64_t>(p.in.size());
  p.scan = n_in > 0 && kVectorWidth * (n_in + nnz / n_in) < nnz;
  // by column too (rows ascending within each): the axpy fills one output column at a time, which stays
  // in cache, adding its terms in the same order as the rows would
  p.col_ptr.assign(p.out.size() + 1, 0);
  for (int32_t c : p.col) ++p.col_ptr[c + 1];
  for (size_t c = 0; c < p.out.size(); ++c) p.col_ptr[c + 1] += p.col_ptr[c];
  p.col_row.resize(p.col.size());
  p.col_val.resize(p.col.size());
  std::vector<int32_t> fill(p.col_ptr.begin(), p.col_ptr.end() - 1);
  for (int i = 0; i < p.n_in(); ++i)
    for (int32_t k = p.ptr[i]; k < p.ptr[i + 1]; ++k) {
      p.col_row[fill[p.col[k]]] = i;
      p.col_val[fill[p.col[k]]++] = p.val[k];
    }
  return p;
}

std::vector<int32_t> iota(int n) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

std::vector<int32_t> where(const std::vector<uint8_t>& flags) {
  std::vector<int32_t> v;
  for (size_t i = 0; i < flags.size(); ++i)
    if (flags[i]) v.push_back(static_cast<int32_t>(i));
  return v;
}

PackedModel::Rows nonzero_rows(const float* w, int rows, int cols) {
  PackedModel::Rows out;
  out.ptr.push_back(0);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      const float v = w[static_cast<size_t>(i) * cols + j];
      if (v == 0.0f) continue;
      out.col.push_back(j);
      out.val.push_back(v);
    }
    out.ptr.push_back(static_cast<int32_t>(out.col.size()));
  }
  return out;
}

// Whether p[0..n) are all zero (a vectorised test: no branch per value).
inline bool all_zero(const float* p, int n) {
  int any = 0;
  for (int r = 0; r < n; ++r) any |= p[r] != 0.0f;
  return any == 0;
}

// Y[c][r] = bias[c] + sum_i X[in[i]][r] * w, feature-major with row count n.
RASP_VECTOR_CLONES void apply(const PackedMat& P, const float* X, int n, float* Y) {
  if (!P.scan) {
    for (int c = 0; c < P.n_out(); ++c) {
      float* y = Y + static_cast<size_t>(c) * n;
      std::fill(y, y + n, P.bias[c]);
      for (int32_t k = P.col_ptr[c]; k < P.col_ptr[c + 1]; ++k) {
        const float w = P.col_val[k];
        const float* xi = X + static_cast<size_t>(P.in[P.col_row[k]]) * n;
        for (int r = 0; r < n; ++r) y[r] += w * xi[r];
      }
    }
    return;
  }
  for (int c = 0; c < P.n_out(); ++c)
    std::fill(Y + static_cast<size_t>(c) * n, Y + static_cast<size_t>(c + 1) * n, P.bias[c]);
  for (int i = 0; i < P.n_in(); ++i) {
    const float* xi = X + static_cast<size_t>(P.in[i]) * n;
    if (all_zero(xi, n)) continue;  // a one-hot variable's value that no row of the chunk holds
    for (int r = 0; r < n; ++r) {
      const float a = xi[r];
      if (a == 0.0f) continue;
      for (int32_t k = P.ptr[i]; k < P.ptr[i + 1]; ++k) Y[static_cast<size_t>(P.col[k]) * n + r] += a * P.val[k];
    }
  }
}

// exp(x) (x = score - max) as std::exp computes it, without calling it where its value is known exactly: 1 at the
// maximum and 0 far below it (expf rounds to 0 below -104), which is where compiled scores sit.
inline float softmax_term(float x) {
  if (x == 0.0f) return 1.0f;
  if (!(x >= -104.0f)) return 0.0f;  // also -inf (masked keys)
  return std::exp(x);
}

// Scratch memory left uninitialised (every buffer is written before it is read): zero-filling the
// buffers of every call cost as much as a small model's forward pass.
template <class T>
struct Scratch {
  std::unique_ptr<T[]> p;
  void resize(size_t n) { p.reset(new T[std::max<size_t>(n, 1)]); }
  T* data() { return p.get(); }
  T& operator[](size_t i) { return p[i]; }
};

struct Buffers {
  Scratch<float> x, q, k, v, z, o, acc, hidden, mlp, unembed, scores, weights, mx, inv, head_rec;
  Scratch<int32_t> tok, keys, n_keys;
};

// Rows of a chunk are position-major (row t * n_seq + s is position t of sequence s), so every
// position's activations across the chunk's sequences are contiguous.

// One head's attention records ([B, H, T, T] scores and pattern, null when not wanted), already offset to
// the chunk's first sequence and the head; a sequence's rows are `stride` floats apart.
struct AttnRecord {
  float *scores = nullptr, *pattern = nullptr;
  size_t stride = 0;
  float* row(float* base, int s, int i, int T) const {
    return base + static_cast<size_t>(s) * stride + static_cast<size_t>(i) * T;
  }
};

// Attention with every (query, key) pair computed across all sequences at once (vectorised over
// sequences): the choice for heads with few q/k features.
RASP_VECTOR_CLONES void attend_across(const PackedHead& h, int n_seq, int T, const int32_t* tok, int pad, bool causal,
                                      Buffers& b, const AttnRecord& rec) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int ns = n_seq, n = n_seq * T, nqk = h.q.n_out(), nvo = h.v.n_out();
  float* S = b.scores.data();  // [T][ns]: scores, then weights, of one query against every key
  float* mx = b.mx.data();
  float* inv = b.inv.data();
  for (int i = 0; i < T; ++i) {
    const int keys = causal ? i + 1 : T;
    // scores summed over the q/k columns in registers, 16 sequences at a time (each sum still starts at 0
    // and adds the columns in order)
    constexpr int kLanes = 16;
    const float* q0 = b.q.data() + static_cast<size_t>(i) * ns;
    for (int j = 0; j < keys; ++j) {
      const float* k0 = b.k.data() + static_cast<size_t>(j) * ns;
      float* Sj = S + static_cast<size_t>(j) * ns;
      int s0 = 0;
      for (; s0 + kLanes <= ns; s0 += kLanes) {
        float acc[kLanes] = {};
        for (int c = 0; c < nqk; ++c) {
          const float* qc = q0 + static_cast<size_t>(c) * n + s0;
          const float* kc = k0 + static_cast<size_t>(c) * n + s0;
          for (int u = 0; u < kLanes; ++u) acc[u] += qc[u] * kc[u];
        }
        std::copy(acc, acc + kLanes, Sj + s0);
      }
      for (int s = s0; s < ns; ++s) {
        float acc = 0.0f;
        for (int c = 0; c < nqk; ++c) acc += q0[static_cast<size_t>(c) * n + s] * k0[static_cast<size_t>(c) * n + s];
        Sj[s] = acc;
      }
    }
    if (pad >= 0)
      for (int j = 0; j < keys; ++j)
        for (int s = 0; s < ns; ++s)
          if (tok[static_cast<size_t>(j) * ns + s] == pad) S[static_cast<size_t>(j) * ns + s] = neg_inf;
    if (rec.scores)
      for (int s = 0; s < ns; ++s) {
        float* row = rec.row(rec.scores, s, i, T);
        for (int j = 0; j < T; ++j) row[j] = j < keys ? S[static_cast<size_t>(j) * ns + s] : neg_inf;
      }
    std::fill(mx, mx + ns, neg_inf);
    for (int j = 0; j < keys; ++j)
      for (int s = 0; s < ns; ++s) mx[s] = std::max(mx[s], S[static_cast<size_t>(j) * ns + s]);
    std::fill(inv, inv + ns, 0.0f);  // the sums, then their inverses
    for (int j = 0; j < keys; ++j) {
      float* Sj = S + static_cast<size_t>(j) * ns;
      // A key's offsets from the maximum take few values across sequences (0 where attended, one
      // value elsewhere): then one exp serves the whole row and the rest is a vectorised select.
      int nonzero = 0;  // (a vectorised count first: rows of a key every sequence attends are all zero)
      for (int s = 0; s < ns; ++s) {
        Sj[s] -= mx[s];
        nonzero += Sj[s] != 0.0f;
      }
      float other = 0.0f;
      for (int s = 0; s < ns && nonzero && other == 0.0f; ++s) other = Sj[s];
      int novel = 0;
      for (int s = 0; s < ns; ++s) novel |= (Sj[s] != 0.0f) & (Sj[s] != other);
      if (!novel) {
        const float p = softmax_term(other);
        for (int s = 0; s < ns; ++s) {
          Sj[s] = Sj[s] == 0.0f ? 1.0f : p;
          inv[s] += Sj[s];
        }
        continue;
      } else {
        // the two commonest cases vectorised; what is left is still an offset (< 0, or NaN where every
        // key is masked), while weights are >= 0: one exp per run of equal offsets
        const float p = softmax_term(other);
        for (int s = 0; s < ns; ++s) Sj[s] = Sj[s] == 0.0f ? 1.0f : Sj[s] == other ? p : Sj[s];
        float last_x = 0.0f, last_p = 1.0f;
        for (int s = 0; s < ns; ++s) {
          const float x = Sj[s];
          if (!(x < 0.0f) && x == x) continue;
          if (x != last_x) {
            last_x = x;
            last_p = softmax_term(x);
          }
          Sj[s] = last_p;
        }
      }
      for (int s = 0; s < ns; ++s) inv[s] += Sj[s];
    }
    for (int s = 0; s < ns; ++s) inv[s] = mx[s] == neg_inf ? 0.0f : 1.0f / inv[s];  // all masked: z = 0
    if (rec.pattern)  // (the normalised weight, rounded as below)
      for (int s = 0; s < ns; ++s) {
        float* row = rec.row(rec.pattern, s, i, T);
        for (int j = 0; j < T; ++j)
          row[j] = j < keys && inv[s] != 0.0f ? S[static_cast<size_t>(j) * ns + s] * inv[s] : 0.0f;
      }
    // z = sum over keys of (weight * inv) * v: the normalised weight is rounded first, as everywhere;
    // with one v column it is formed inside the mixing loop instead of in a pass of its own
    if (nvo > 1)
      for (int j = 0; j < keys; ++j)
        for (int s = 0; s < ns; ++s) S[static_cast<size_t>(j) * ns + s] *= inv[s];
    for (int c = 0; c < nvo; ++c) {
      float* zi = b.z.data() + static_cast<size_t>(c) * n + static_cast<size_t>(i) * ns;
      std::fill(zi, zi + ns, 0.0f);
      for (int j = 0; j < keys; ++j) {
        const float* vj = b.v.data() + static_cast<size_t>(c) * n + static_cast<size_t>(j) * ns;
        const float* Pj = S + static_cast<size_t>(j) * ns;
        if (nvo > 1) {
          for (int s = 0; s < ns; ++s) zi[s] += Pj[s] * vj[s];
        } else {
          for (int s = 0; s < ns; ++s) {
            const float p = Pj[s] * inv[s];
            zi[s] += p * vj[s];
          }
        }
      }
    }
  }
}

// Attention one sequence at a time, skipping zero q entries and unattended keys: the choice for heads
// with many q/k features read through a one-hot variable (a comparison table over many values).
RASP_VECTOR_CLONES void attend_each(const PackedHead& h, int n_seq, int T, const int32_t* tok, int pad, bool causal,
                                    Buffers& b, const AttnRecord& rec) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int ns = n_seq, n = n_seq * T, nqk = h.q.n_out(), nvo = h.v.n_out();
  float* S = b.scores.data();  // [T][T] of one sequence
  int32_t* keys = b.keys.data();
  float* weights = b.weights.data();
  for (int s = 0; s < ns; ++s) {
    std::fill(S, S + static_cast<size_t>(T) * T, 0.0f);
    for (int c = 0; c < nqk; ++c) {
      const float* qc = b.q.data() + static_cast<size_t>(c) * n + s;
      const float* kc = b.k.data() + static_cast<size_t>(c) * n + s;
      if (ns == 1 && all_zero(qc, T)) continue;  // (one sequence per chunk: its q column is contiguous)
      for (int i = 0; i < T; ++i) {
        const float a = qc[static_cast<size_t>(i) * ns];
        if (a == 0.0f) continue;
        float* Si = S + static_cast<size_t>(i) * T;
        for (int j = 0; j < T; ++j) Si[j] += a * kc[static_cast<size_t>(j) * ns];
      }
    }
    for (int i = 0; i < T; ++i) {
      float* Si = S + static_cast<size_t>(i) * T;
      float mx = neg_inf;
      for (int j = 0; j < T; ++j) {
        if ((causal && j > i) || (pad >= 0 && tok[static_cast<size_t>(j) * ns + s] == pad)) Si[j] = neg_inf;
        mx = std::max(mx, Si[j]);
      }
      if (rec.scores) std::copy(Si, Si + T, rec.row(rec.scores, s, i, T));
      float* pattern = rec.pattern ? rec.row(rec.pattern, s, i, T) : nullptr;
      if (pattern) std::fill(pattern, pattern + T, 0.0f);
      int nk = 0;
      if (mx != neg_inf) {  // else every key is masked and z stays 0
        float sum = 0.0f;
        for (int j = 0; j < T; ++j) {
          const float p = softmax_term(Si[j] - mx);
          Si[j] = p;
          sum += p;
        }
        const float inv = 1.0f / sum;
        for (int j = 0; j < T; ++j) {
          const float p = Si[j] * inv;
          if (pattern) pattern[j] = p;
          if (p == 0.0f) continue;
          keys[i * T + nk] = j;
          weights[i * T + nk] = p;
          ++nk;
        }
      }
      b.n_keys[i] = nk;
    }
    for (int c = 0; c < nvo; ++c) {
      const float* vc = b.v.data() + static_cast<size_t>(c) * n + s;
      float* zc = b.z.data() + static_cast<size_t>(c) * n + s;
      for (int i = 0; i < T; ++i) {
        float acc = 0.0f;
        for (int k = 0; k < b.n_keys[i]; ++k) acc += weights[i * T + k] * vc[static_cast<size_t>(keys[i * T + k]) * ns];
        zc[static_cast<size_t>(i) * ns] = acc;
      }
    }
  }
}

// Whether computing every score across sequences (vectorised) beats skipping zero q entries one
// sequence at a time (which pays per sequence but only for the q features that are set).
bool scores_across(int nqk, int T) {
  const int64_t across = static_cast<int64_t>(nqk) * T * T / 4;
  const int64_t each = static_cast<int64_t>(nqk) * T + 8 * static_cast<int64_t>(T) * T;
  return across <= each;
}

// Writes a feature-major [features][n] buffer (position-major rows) into sequences s0.. of a [B, T, D]
// record (D: the record's width): every feature in order (cols null), or the features `cols` with zeros
// elsewhere.
void put_record(float* rec, const float* src, const std::vector<int32_t>* cols, int64_t s0, int ns, int T, int D) {
  const int n = ns * T, n_cols = cols ? static_cast<int>(cols->size()) : D;
  float* dst = rec + static_cast<size_t>(s0) * T * D;
  if (cols) std::fill(dst, dst + static_cast<size_t>(n) * D, 0.0f);
  for (int s = 0; s < ns; ++s)
    for (int t = 0; t < T; ++t) {
      float* row = dst + (static_cast<size_t>(s) * T + t) * D;
      const float* col0 = src + static_cast<size_t>(t) * ns + s;
      for (int c = 0; c < n_cols; ++c) row[cols ? (*cols)[c] : c] = col0[static_cast<size_t>(c) * n];
    }
}

// Writes a head's feature-major [cols][n] buffer into sequences s0.. of a [B, T, H, width] record, at head h
// and columns `cols` (the caller has zeroed the rest).
void put_head_record(float* rec, const float* src, const std::vector<int32_t>& cols, int64_t s0, int ns, int T,
                     int H, int h, int width) {
  const size_t n = static_cast<size_t>(ns) * T;
  for (size_t c = 0; c < cols.size(); ++c)
    for (int s = 0; s < ns; ++s)
      for (int t = 0; t < T; ++t)
        rec[(((s0 + s) * T + t) * H + h) * width + cols[c]] = src[c * n + static_cast<size_t>(t) * ns + s];
}

RASP_VECTOR_CLONES void forward_chunk(const Model& m, const PackedModel& p, const int32_t* tokens, int n_seq, int T,
                                      float* out, Buffers& b, const Record* rec, int64_t s0) {
  const ModelDims& d = m.dims;
  const int ns = n_seq, n = n_seq * T, V = d.d_vocab_out, D = d.d_model, H = d.n_heads;
  auto record = [&](float* sink, const float* src, const std::vector<int32_t>* cols, int width = -1) {
    if (sink) put_record(sink, src, cols, s0, ns, T, width < 0 ? D : width);
  };
  int32_t* tok = b.tok.data();
  for (int s = 0; s < ns; ++s)
    for (int t = 0; t < T; ++t) tok[static_cast<size_t>(t) * ns + s] = tokens[static_cast<size_t>(s) * T + t];
  float* X = b.x.data();
  for (int32_t f : p.zero_features) std::fill(X + static_cast<size_t>(f) * n, X + static_cast<size_t>(f + 1) * n, 0.0f);
  for (size_t c = 0; c < p.embed_features.size(); ++c) {
    const float* table = p.embed_table.data() + c * d.d_vocab;
    float* x = X + static_cast<size_t>(p.embed_features[c]) * n;
    const int32_t only = p.embed_only[c];
    if (only >= 0) {  // one token writes this feature (a token's own direction): a vectorised select
      const float w = table[only];
      for (int r = 0; r < n; ++r) x[r] = tok[r] == only ? w : 0.0f;
    } else {
      for (int r = 0; r < n; ++r) x[r] = table[tok[r]];
    }
  }
  if (rec) {
    record(rec->embed, X, nullptr);
    if (rec->pos_embed)
      for (int s = 0; s < ns; ++s)
        for (int t = 0; t < T; ++t)
          std::copy(m.w_pos.data() + static_cast<size_t>(t) * D, m.w_pos.data() + static_cast<size_t>(t + 1) * D,
                    rec->pos_embed + ((static_cast<size_t>(s0) + s) * T + t) * D);
  }
  for (int t = 0; t < T; ++t)  // (e + p, as the per-sequence path adds them: two terms, either order)
    for (int32_t k = p.pos.ptr[t]; k < p.pos.ptr[t + 1]; ++k) {
      float* x = X + static_cast<size_t>(p.pos.col[k]) * n + static_cast<size_t>(t) * ns;
      for (int s = 0; s < ns; ++s) x[s] += p.pos.val[k];
    }
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const PackedLayer& L = p.layers[l];
    const LayerRecord* r = (rec && !rec->layers.empty()) ? &rec->layers[l] : nullptr;
    if (r) record(r->resid_pre, X, nullptr);
    if (r && r->attn_out && L.attn_cols.empty()) record(r->attn_out, X, &L.attn_cols);  // all zero
    const bool head_records = r && r->any_attention();  // every head's, active or not
    if (head_records) {  // [B, T, H, E] and [B, T, H, D]: zero but where a head writes
      const int64_t from = s0 * T * H, to = (s0 + ns) * T * H;
      for (float* a : {r->q, r->k, r->v, r->z})
        if (a) std::fill(a + from * d.d_head, a + to * d.d_head, 0.0f);
      if (r->result) std::fill(r->result + from * D, r->result + to * D, 0.0f);
    }
    auto put_head = [&](float* sink, const float* src, const std::vector<int32_t>& cols, int h, int width) {
      if (sink) put_head_record(sink, src, cols, s0, ns, T, H, h, width);
    };
    if (!L.attn_cols.empty() || head_records) {  // (b_O is added even without active heads)
      const int na = static_cast<int>(L.attn_cols.size());
      for (int u = 0; u < na; ++u)
        std::fill(b.acc.data() + static_cast<size_t>(u) * n, b.acc.data() + static_cast<size_t>(u + 1) * n, L.b_o[u]);
      const size_t HTT = static_cast<size_t>(H) * T * T;
      for (const PackedHead& h : L.heads) {
        if (!h.active && !head_records) continue;  // an inactive head changes nothing
        if (r && r->q) {
          apply(h.q_all, X, n, b.head_rec.data());
          put_head(r->q, b.head_rec.data(), h.q_cols, h.head, d.d_head);
        }
        if (r && r->k) {
          apply(h.k_all, X, n, b.head_rec.data());
          put_head(r->k, b.head_rec.data(), h.k_cols, h.head, d.d_head);
        }
        apply(h.q, X, n, b.q.data());
        apply(h.k, X, n, b.k.data());
        apply(h.v, X, n, b.v.data());
        if (r) put_head(r->v, b.v.data(), h.v_cols, h.head, d.d_head);
        AttnRecord ar;
        if (r && (r->scores || r->pattern)) {
          const size_t at = (s0 * H + h.head) * static_cast<size_t>(T) * T;
          ar = AttnRecord{r->scores ? r->scores + at : nullptr, r->pattern ? r->pattern + at : nullptr, HTT};
        }
        if (scores_across(h.q.n_out(), T)) attend_across(h, ns, T, tok, d.pad_token_id, d.causal, b, ar);
        else attend_each(h, ns, T, tok, d.pad_token_id, d.causal, b, ar);
        if (r) put_head(r->z, b.z.data(), h.v_cols, h.head, d.d_head);
        apply(h.o, b.z.data(), n, b.o.data());
        if (r) put_head(r->result, b.o.data(), h.o_features, h.head, D);
        for (int c = 0; c < h.o.n_out(); ++c) {
          float* a = b.acc.data() + static_cast<size_t>(h.o.out[c]) * n;
          const float* y = b.o.data() + static_cast<size_t>(c) * n;
          for (int r = 0; r < n; ++r) a[r] += y[r];
        }
      }
      if (r) record(r->attn_out, b.acc.data(), &L.attn_cols);
      for (int u = 0; u < na; ++u) {
        float* x = X + static_cast<size_t>(L.attn_cols[u]) * n;
        const float* a = b.acc.data() + static_cast<size_t>(u) * n;
        for (int r = 0; r < n; ++r) x[r] += a[r];
      }
    }
    if (r) record(r->resid_mid, X, nullptr);
    if (L.mlp_out.n_out() > 0 || (r && (r->mlp_pre || r->mlp_post))) {
      apply(L.mlp_in, X, n, b.hidden.data());
      if (r) record(r->mlp_pre, b.hidden.data(), &L.neurons, d.d_mlp);
      for (size_t i = 0, e = static_cast<size_t>(L.mlp_in.n_out()) * n; i < e; ++i)
        b.hidden[i] = b.hidden[i] > 0.0f ? b.hidden[i] : 0.0f;
      if (r) record(r->mlp_post, b.hidden.data(), &L.neurons, d.d_mlp);
    }
    if (L.mlp_out.n_out() > 0) {
      apply(L.mlp_out, b.hidden.data(), n, b.mlp.data());
      if (r) record(r->mlp_out, b.mlp.data(), &L.mlp_out.out);
      for (int c = 0; c < L.mlp_out.n_out(); ++c) {
        float* x = X + static_cast<size_t>(L.mlp_out.out[c]) * n;
        const float* y = b.mlp.data() + static_cast<size_t>(c) * n;
        for (int r = 0; r < n; ++r) x[r] += y[r];
      }
    } else if (r) {
      record(r->mlp_out, X, &L.mlp_out.out);  // all zero
    }
    if (r) record(r->resid_post, X, nullptr);
  }
  apply(p.unembed, X, n, b.unembed.data());
  const float* Y = b.unembed.data();
  for (int s = 0; s < ns; ++s)  // written in order; the strided reads stay in cache across sequences
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < V; ++c)
        *out++ = Y[static_cast<size_t>(c) * n + static_cast<size_t>(t) * ns + s];
}

}  // namespace

PackedModel pack_model(const Model& m) {
  const ModelDims& d = m.dims;
  const int D = d.d_model, E = d.d_head, M = d.d_mlp, V = d.d_vocab_out;
  PackedModel p;
  const std::vector<int32_t> all_rows = iota(std::max({D, E, M}));
  int widest = std::max(D, V);
  for (int l = 0; l < d.n_layers; ++l) {
    const LayerWeights& L = m.layers[l];
    PackedLayer pl;
    std::vector<uint8_t> attn_live(D, 0);
    for (int j = 0; j < D; ++j) attn_live[j] = L.b_o[j] != 0.0f;
    for (int h = 0; h < d.n_heads; ++h) {
      if (!L.head_active[h]) continue;
      for (int64_t k = 0; k < L.wo[h].nnz; ++k) attn_live[L.wo[h].col[k]] = 1;
    }
    pl.attn_cols = where(attn_live);
    for (int32_t j : pl.attn_cols) pl.b_o.push_back(L.b_o[j]);
    std::vector<int32_t> attn_index(D, -1);
    for (size_t u = 0; u < pl.attn_cols.size(); ++u) attn_index[pl.attn_cols[u]] = static_cast<int32_t>(u);
    for (int h = 0; h < d.n_heads; ++h) {
      const float* bq = L.bqkv.data() + static_cast<size_t>(0 * d.n_heads + h) * E;
      const float* bk = L.bqkv.data() + static_cast<size_t>(1 * d.n_heads + h) * E;
      const float* bv = L.bqkv.data() + static_cast<size_t>(2 * d.n_heads + h) * E;
      const std::vector<int32_t>& qk_cols = L.cols[h].qk;
      PackedHead ph;
      ph.head = h;
      ph.active = L.head_active[h] != 0;
      ph.q = pack(L.wq[h], bq, qk_cols, iota(static_cast<int>(qk_cols.size())), all_rows);
      ph.k = pack(L.wk[h], bk, qk_cols, iota(static_cast<int>(qk_cols.size())), all_rows);
      ph.q_cols = L.cols[h].q;
      ph.k_cols = L.cols[h].k;
      ph.q_all = pack(L.wq[h], bq, ph.q_cols, iota(static_cast<int>(ph.q_cols.size())), all_rows);
      ph.k_all = pack(L.wk[h], bk, ph.k_cols, iota(static_cast<int>(ph.k_cols.size())), all_rows);
      ph.v_cols = L.cols[h].v;  // every v column that can be non-zero (z records need the ones W_O skips)
      ph.v = pack(L.wv[h], bv, ph.v_cols, iota(static_cast<int>(ph.v_cols.size())), all_rows);
      std::vector<int32_t> z_index(E, -1);
      for (size_t c = 0; c < ph.v_cols.size(); ++c) z_index[ph.v_cols[c]] = static_cast<int32_t>(c);
      const std::vector<uint8_t> o_live = L.wo[h].live_columns(nullptr);
      const std::vector<int32_t> o_cols = where(o_live);
      std::vector<int32_t> o_ids;
      for (int32_t j : o_cols) o_ids.push_back(attn_index[j]);
      ph.o = pack(L.wo[h], nullptr, o_cols, o_ids, z_index);
      ph.o_features = o_cols;
      widest = std::max({widest, ph.q.n_out(), ph.v.n_out(), ph.o.n_out()});  // (q_all/k_all: their own buffer)
      pl.heads.push_back(std::move(ph));
    }
    widest = std::max(widest, static_cast<int>(pl.attn_cols.size()));
    {  // (b_out is added even without neurons)
      const std::vector<int32_t> neurons = where(L.w_in.live_columns(L.b_in.data()));  // the rest are 0
      std::vector<int32_t> hidden_index(M, -1);
      for (size_t c = 0; c < neurons.size(); ++c) hidden_index[neurons[c]] = static_cast<int32_t>(c);
      pl.mlp_in = pack(L.w_in, L.b_in.data(), neurons, iota(static_cast<int>(neurons.size())), all_rows);
      pl.neurons = neurons;
      const std::vector<int32_t> out_cols = where(L.w_out.live_columns(L.b_out.data()));
      pl.mlp_out = pack(L.w_out, L.b_out.data(), out_cols, out_cols, hidden_index);
      widest = std::max({widest, pl.mlp_in.n_out(), pl.mlp_out.n_out()});
    }
    p.layers.push_back(std::move(pl));
  }
  p.unembed = pack(m.w_u, m.b_u.data(), iota(V), iota(V), all_rows);
  for (int f = 0; f < D; ++f) {
    bool any = false;
    for (int t = 0; t < d.d_vocab; ++t) any = any || m.w_e[static_cast<size_t>(t) * D + f] != 0.0f;
    (any ? p.embed_features : p.zero_features).push_back(f);
    if (!any) continue;
    int writers = 0, only = -1;
    for (int t = 0; t < d.d_vocab; ++t) {
      const float w = m.w_e[static_cast<size_t>(t) * D + f];
      p.embed_table.push_back(w);
      if (w != 0.0f) {
        ++writers;
        only = t;
      }
    }
    p.embed_only.push_back(writers == 1 ? only : -1);
  }
  p.pos = nonzero_rows(m.w_pos.data(), d.n_ctx, D);
  p.widest = widest;
  return p;
}

void forward_feature_major(const Model& m, const PackedModel& p, const int32_t* tokens, int B, int T, float* out,
                           int threads, const Record* rec) {
  if (B <= 0 || T <= 0) return;
  const int workers = resolve_threads(threads);
  int64_t per_chunk = std::max<int64_t>(1, kChunkFloats / (static_cast<int64_t>(T) * p.widest));
  per_chunk = std::min<int64_t>(per_chunk, (B + workers - 1) / workers);
  const int64_t chunks = (B + per_chunk - 1) / per_chunk;
  const int nw = worker_count(chunks, threads);
  std::vector<Buffers> buffers(nw);
  const size_t cap = static_cast<size_t>(per_chunk) * T;
  for (Buffers& b : buffers) {
    const ModelDims& d = m.dims;
    int nqk = 0, nvo = 0, no = 0, na = 0, nh = 0, nm = 0, nrec = 0;
    for (const PackedLayer& L : p.layers) {
      for (const PackedHead& h : L.heads) {
        nrec = rec ? std::max({nrec, h.q_all.n_out(), h.k_all.n_out()}) : 0;
        nqk = std::max(nqk, h.q.n_out());
        nvo = std::max(nvo, h.v.n_out());
        no = std::max(no, h.o.n_out());
      }
      na = std::max(na, static_cast<int>(L.attn_cols.size()));
      nh = std::max(nh, L.mlp_in.n_out());
      nm = std::max(nm, L.mlp_out.n_out());
    }
    b.x.resize(static_cast<size_t>(d.d_model) * cap);
    b.q.resize(nqk * cap);
    b.k.resize(nqk * cap);
    b.v.resize(nvo * cap);
    b.z.resize(nvo * cap);
    b.o.resize(no * cap);
    b.acc.resize(na * cap);
    b.hidden.resize(nh * cap);
    b.head_rec.resize(nrec * cap);
    b.mlp.resize(nm * cap);
    b.unembed.resize(static_cast<size_t>(d.d_vocab_out) * cap);
    b.scores.resize(static_cast<size_t>(T) * std::max<int64_t>(T, per_chunk));
    b.weights.resize(static_cast<size_t>(T) * T);
    b.keys.resize(static_cast<size_t>(T) * T);
    b.n_keys.resize(T);
    b.mx.resize(per_chunk);
    b.inv.resize(per_chunk);
    b.tok.resize(cap);
  }
  const size_t TV = static_cast<size_t>(T) * m.dims.d_vocab_out;
  parallel_for_worker(chunks, threads, [&](int64_t c, int w) {
    const int64_t s0 = c * per_chunk;
    const int n_seq = static_cast<int>(std::min<int64_t>(per_chunk, B - s0));
    forward_chunk(m, p, tokens + s0 * T, n_seq, T, out + s0 * TV, buffers[w], rec, s0);
  });
}

}  // namespace rasp
