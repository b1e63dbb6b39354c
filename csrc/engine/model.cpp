#include "engine/model.h"

#include <stdexcept>

namespace rasp {

void SparseMat::init(const float* w, int r, int c, int64_t row_stride, int64_t col_stride) {
  rows = r;
  cols = c;
  row_ptr.assign(static_cast<size_t>(r) + 1, 0);
  col.clear();
  val.clear();
  nz_rows.clear();
  for (int i = 0; i < r; ++i) {
    const size_t start = col.size();
    for (int j = 0; j < c; ++j) {
      const float v = w[i * row_stride + j * col_stride];
      if (v == 0.0f) continue;
      col.push_back(j);
      val.push_back(v);
    }
    row_ptr[i + 1] = static_cast<int32_t>(col.size());
    if (col.size() > start) nz_rows.push_back(i);
  }
  nnz = static_cast<int64_t>(col.size());
  // CSR wins when rows are short; the dense row loop vectorises and wins above ~1/4 density.
  use_dense = r > 0 && c > 0 && nnz * 4 > static_cast<int64_t>(r) * c;
  dense = use_dense ? to_dense() : std::vector<float>();
}

std::vector<float> SparseMat::to_dense() const {
  std::vector<float> d(static_cast<size_t>(rows) * cols, 0.0f);
  for (int i = 0; i < rows; ++i)
    for (int32_t k = row_ptr[i]; k < row_ptr[i + 1]; ++k) d[static_cast<size_t>(i) * cols + col[k]] = val[k];
  return d;
}

std::vector<float> SparseMat::dense_rows() const {
  std::vector<float> d(nz_rows.size() * cols, 0.0f);
  for (size_t r = 0; r < nz_rows.size(); ++r)
    for (int32_t k = row_ptr[nz_rows[r]]; k < row_ptr[nz_rows[r] + 1]; ++k) d[r * cols + col[k]] = val[k];
  return d;
}

std::vector<uint8_t> SparseMat::live_columns(const float* bias) const {
  std::vector<uint8_t> live(cols, 0);
  for (int64_t k = 0; k < nnz; ++k) live[col[k]] = 1;
  if (bias)
    for (int j = 0; j < cols; ++j) live[j] |= bias[j] != 0.0f;
  return live;
}

void SparseMat::accumulate(const float* x, float* y) const {
  if (use_dense) {
    for (int32_t i : nz_rows) {
      const float xi = x[i];
      if (xi == 0.0f) continue;
      const float* row = dense.data() + static_cast<size_t>(i) * cols;
      for (int j = 0; j < cols; ++j) y[j] += xi * row[j];
    }
  } else {
    for (int32_t i : nz_rows) {
      const float xi = x[i];
      if (xi == 0.0f) continue;
      for (int32_t k = row_ptr[i]; k < row_ptr[i + 1]; ++k) y[col[k]] += xi * val[k];
    }
  }
}

Model build_model(const ModelDims& d, const ModelWeightViews& w) {
  if (d.n_layers < 0 || d.d_model < 1 || d.n_heads < 0 || d.d_head < 0 || d.d_mlp < 0 || d.n_ctx < 1 ||
      d.d_vocab < 1 || d.d_vocab_out < 1)
    throw std::invalid_argument("build_model: invalid model dimensions");
  if (static_cast<int>(w.layers.size()) != d.n_layers)
    throw std::invalid_argument("build_model: number of layer weight sets differs from n_layers");
  if (d.pad_token_id >= d.d_vocab) throw std::invalid_argument("build_model: pad_token_id >= d_vocab");
  Model m;
  m.dims = d;
  const int D = d.d_model, H = d.n_heads, E = d.d_head, M = d.d_mlp;
  m.w_e.assign(w.W_E, w.W_E + static_cast<size_t>(d.d_vocab) * D);
  m.w_pos.assign(w.W_pos, w.W_pos + static_cast<size_t>(d.n_ctx) * D);
  m.w_u.init(w.W_U, D, d.d_vocab_out, d.d_vocab_out, 1);
  m.b_u.assign(w.b_U, w.b_U + d.d_vocab_out);
  m.layers.resize(d.n_layers);
  for (int l = 0; l < d.n_layers; ++l) {
    const LayerWeightViews& v = w.layers[l];
    LayerWeights& L = m.layers[l];
    // Fused QKV: gather [3][H][D][E] into [D][3*H*E].
    std::vector<float> fused(static_cast<size_t>(D) * 3 * H * E);
    const float* mats[3] = {v.W_Q, v.W_K, v.W_V};
    const float* biases[3] = {v.b_Q, v.b_K, v.b_V};
    L.bqkv.assign(static_cast<size_t>(3) * H * E, 0.0f);
    for (int t = 0; t < 3; ++t)
      for (int h = 0; h < H; ++h) {
        for (int i = 0; i < D; ++i)
          for (int e = 0; e < E; ++e)
            fused[static_cast<size_t>(i) * 3 * H * E + (t * H + h) * E + e] =
                mats[t][(static_cast<size_t>(h) * D + i) * E + e];
        for (int e = 0; e < E; ++e) L.bqkv[(t * H + h) * E + e] = biases[t][h * E + e];
      }
    L.qkv.init(fused.data(), D, 3 * H * E, 3 * H * E, 1);
    L.wq.resize(H);
    L.wk.resize(H);
    L.wv.resize(H);
    L.wo.resize(H);
    L.head_active.assign(H, 0);
    for (int h = 0; h < H; ++h) {
      const size_t off = static_cast<size_t>(h) * D * E;
      L.wq[h].init(v.W_Q + off, D, E, E, 1);
      L.wk[h].init(v.W_K + off, D, E, E, 1);
      L.wv[h].init(v.W_V + off, D, E, E, 1);
      L.wo[h].init(v.W_O + static_cast<size_t>(h) * E * D, E, D, D, 1);
      L.head_active[h] = L.wo[h].is_zero() ? 0 : 1;
    }
    L.cols.resize(H);
    for (int h = 0; h < H; ++h) {
      const auto bias = [&](int m) { return L.bqkv.data() + static_cast<size_t>(m * H + h) * E; };
      const std::vector<uint8_t> q = L.wq[h].live_columns(bias(0)), k = L.wk[h].live_columns(bias(1)),
                                 val = L.wv[h].live_columns(bias(2));
      for (int e = 0; e < E; ++e) {
        if (q[e]) L.cols[h].q.push_back(e);
        if (k[e]) L.cols[h].k.push_back(e);
        if (q[e] && k[e]) L.cols[h].qk.push_back(e);
        if (val[e]) L.cols[h].v.push_back(e);
      }
    }
    L.b_o.assign(v.b_O, v.b_O + D);
    L.w_in.init(v.W_in, D, M, M, 1);
    L.b_in.assign(v.b_in, v.b_in + M);
    L.w_out.init(v.W_out, M, D, D, 1);
    L.b_out.assign(v.b_out, v.b_out + D);
  }
  return m;
}

}  // namespace rasp
