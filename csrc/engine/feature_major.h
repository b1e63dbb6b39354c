// Plain forward passes over many sequences at once, with activations stored feature-major ([feature][row],
// rows = batch x position). Compiled weights are sparse and each component reads and writes a few
// residual features, so every matrix is packed to the inputs and outputs that carry anything and applied
// either one non-zero weight at a time over all rows (a vectorised axpy) or, for long rows such as a
// comparison table read through a one-hot variable, by scanning each input feature for the rows where it
// is non-zero. Work follows the non-zero weights and the non-zero activations, not d_model.
//
// Every sum is taken in the same order as the per-sequence path in cpu_forward.cpp (terms that are
// exactly zero are skipped), so the outputs equal it bit for bit up to the sign of a zero.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/cpu_forward.h"
#include "engine/model.h"

namespace rasp {

// y[out[c]] = bias[c] + sum over packed rows i (ascending input feature in[i]) of x[in[i]] * w.
struct PackedMat {
  std::vector<int32_t> in;        // input feature of each packed row
  std::vector<int32_t> out;       // output feature of each packed column (ascending)
  std::vector<int32_t> ptr, col;  // CSR over packed rows; col indexes packed columns
  std::vector<float> val;
  std::vector<int32_t> col_ptr, col_row;  // the same weights by column (CSC), rows ascending in each
  std::vector<float> col_val;
  std::vector<float> bias;        // per packed column
  bool scan = false;              // long rows: scan each input feature for its non-zero rows
  int n_in() const { return static_cast<int>(in.size()); }
  int n_out() const { return static_cast<int>(out.size()); }
};

// One head with its q/k columns cut to those where both sides can be non-zero and its v columns to
// those that can be (v_cols); o's columns are indexes into the layer's attention output features
// (o_features: the residual features they are). q_all/k_all are q and k over every column that can be
// non-zero (q_cols, k_cols), computed only for hook_q/hook_k records. Heads whose W_O is zero (inactive)
// change nothing; they are run only for attention records.
struct PackedHead {
  int head = 0;
  bool active = true;
  PackedMat q, k, v, o, q_all, k_all;
  std::vector<int32_t> q_cols, k_cols, v_cols, o_features;
};

struct PackedLayer {
  std::vector<PackedHead> heads;   // every head, in order
  std::vector<int32_t> attn_cols;  // residual features the attention sublayer can change
  std::vector<float> b_o;          // b_O at attn_cols
  std::vector<int32_t> neurons;    // the MLP's neurons that can be non-zero (a W_in column or b_in)
  PackedMat mlp_in, mlp_out;       // mlp_in's columns are `neurons`; mlp_out.out are residual features
};

struct PackedModel {
  std::vector<PackedLayer> layers;
  PackedMat unembed;  // every output column
  // W_E by feature: the features some token writes, each with its value for every token id (a gather per
  // row), and the other features (zeroed); W_pos's non-zero entries, CSR by position.
  std::vector<int32_t> embed_features, zero_features;
  std::vector<float> embed_table;  // [embed_features][d_vocab]
  std::vector<int32_t> embed_only;  // per embed feature: the one token writing it, or -1
  struct Rows {
    std::vector<int32_t> ptr, col;
    std::vector<float> val;
  } pos;
  int widest = 1;  // largest feature count of any buffer (sizes the row chunks)
};

PackedModel pack_model(const Model& m);

// tokens [B, T] -> out [B, T, d_vocab_out]; same contract as forward_cpu without caches (every record).
void forward_feature_major(const Model& m, const PackedModel& p, const int32_t* tokens, int B, int T, float* out,
                           int threads, const Record* rec = nullptr);

}  // namespace rasp
