// The engine's copy of a compiled model: plain structs, no Python. Built once from contiguous
// float32 arrays laid out as docs/CONTRACTS.md section 2 says; the CPU (and later CUDA) backends
// read it. Compiled weights are mostly zeros, so every matrix also keeps a sparse form.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rasp {

struct ModelDims {
  int n_layers = 0, d_model = 0, n_heads = 0, d_head = 0, d_mlp = 0;
  int n_ctx = 0, d_vocab = 0, d_vocab_out = 0;
  int pad_token_id = -1;  // -1: the model has no pad token
  bool causal = false;    // every head masked to keys at or before the query

  // Component numbering shared by patches, caches and backends.
  //   writers: 0 embed, 1 pos_embed, then per layer l: heads 2 + l*(H+1) + h, MLP 2 + l*(H+1) + H
  //   readers: per layer l: heads l*(H+1) + h, MLP l*(H+1) + H; output n_layers*(H+1)
  int n_writers() const { return 2 + n_layers * (n_heads + 1); }
  int n_readers() const { return n_layers * (n_heads + 1) + 1; }
  int head_writer(int l, int h) const { return 2 + l * (n_heads + 1) + h; }
  int mlp_writer(int l) const { return 2 + l * (n_heads + 1) + n_heads; }
  int head_reader(int l, int h) const { return l * (n_heads + 1) + h; }
  int mlp_reader(int l) const { return l * (n_heads + 1) + n_heads; }
  int output_reader() const { return n_layers * (n_heads + 1); }
  // Layer of a writer (-1 for the embeddings) and whether it is a head.
  int writer_layer(int w) const { return w < 2 ? -1 : (w - 2) / (n_heads + 1); }
  bool writer_is_mlp(int w) const { return w >= 2 && (w - 2) % (n_heads + 1) == n_heads; }
  int reader_layer(int r) const { return r == output_reader() ? n_layers : r / (n_heads + 1); }
  bool reader_is_mlp(int r) const { return r != output_reader() && r % (n_heads + 1) == n_heads; }
};

// W[rows, cols] (row-major) kept as CSR, and also dense where it is dense enough for the dense loop to
// win (memory follows the non-zeros: a compiled model's padded matrices are mostly empty); accumulate()
// computes y += x @ W, skipping zero entries of x and all-zero rows of W.
struct SparseMat {
  int rows = 0, cols = 0;
  int64_t nnz = 0;
  bool use_dense = true;
  std::vector<float> dense;         // [rows * cols] when use_dense, else empty
  std::vector<int32_t> nz_rows;     // rows with at least one nonzero
  std::vector<int32_t> row_ptr;     // CSR [rows + 1]
  std::vector<int32_t> col;         // CSR [nnz]
  std::vector<float> val;           // CSR [nnz]

  // Copies W; element (i, j) is at w[i * row_stride + j * col_stride].
  void init(const float* w, int rows, int cols, int64_t row_stride, int64_t col_stride);
  void accumulate(const float* x, float* y) const;
  bool is_zero() const { return nnz == 0; }
  std::vector<float> to_dense() const;  // [rows * cols], for backends that want the full matrix
  std::vector<float> dense_rows() const;  // [nz_rows.size() * cols]: the non-zero rows only, in order
  // Per column: does it (or bias[j], when bias is non-null) hold a non-zero?
  std::vector<uint8_t> live_columns(const float* bias) const;
};

// A head's d_head columns that can be non-zero (weights or bias): q, k and v each, and qk where q and k
// both can (the only ones scores sum over). Padded heads (every head has the model's d_head) use few.
struct HeadColumns {
  std::vector<int32_t> q, k, qk, v;
};

struct LayerWeights {
  SparseMat qkv;                       // [d_model, 3*H*d_head]: columns (m*H + h)*d_head + e, m in q,k,v
  std::vector<SparseMat> wq, wk, wv;   // per head [d_model, d_head]: used for edge corrections
  std::vector<float> bqkv;             // [3*H*d_head] same column order as qkv
  std::vector<SparseMat> wo;           // per head [d_head, d_model]
  std::vector<float> b_o;              // [d_model]
  std::vector<uint8_t> head_active;    // W_O[h] has a nonzero (else the head's result is exactly 0)
  std::vector<HeadColumns> cols;       // per head
  SparseMat w_in;                      // [d_model, d_mlp]
  std::vector<float> b_in;             // [d_mlp]
  SparseMat w_out;                     // [d_mlp, d_model]
  std::vector<float> b_out;            // [d_model]
};

struct Model {
  ModelDims dims;
  std::vector<float> w_e;    // [d_vocab, d_model]
  std::vector<float> w_pos;  // [n_ctx, d_model]
  std::vector<LayerWeights> layers;
  SparseMat w_u;             // [d_model, d_vocab_out]
  std::vector<float> b_u;    // [d_vocab_out]
};

// Raw pointers to the contract's arrays (C-contiguous float32), one struct per layer.
struct LayerWeightViews {
  const float *W_Q, *W_K, *W_V, *b_Q, *b_K, *b_V, *W_O, *b_O, *W_in, *b_in, *W_out, *b_out;
};
struct ModelWeightViews {
  const float *W_E, *W_pos, *W_U, *b_U;
  std::vector<LayerWeightViews> layers;
};

// Copies the weights in (the caller's arrays may be freed afterwards). Throws std::invalid_argument
// on inconsistent dims.
Model build_model(const ModelDims& dims, const ModelWeightViews& w);

}  // namespace rasp
