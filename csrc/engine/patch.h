// Patch specifications shared by the CPU and CUDA backends: which component outputs (nodes) or
// which writer->reader-input contributions (edges) take their value from a source run, optionally
// restricted to a subspace of the residual stream. Plain structs; ids as in ModelDims.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "engine/model.h"

namespace rasp {

enum ReaderInput : int { kInputQ = 0, kInputK = 1, kInputV = 2, kInputIn = 3, kNumInputs = 4 };

// Subspace projections, owned by the caller. A projection index p means:
//   p == kWholeOutput: the whole output (patch everything);
//   0 <= p < n_diag:   elementwise weights diag[p, :] (a set of residual directions is a 0/1 mask);
//   n_diag <= p < n_diag + n_mat: right-multiplication by mat[p - n_diag] ([d_model, d_model]).
// A patched value is current + proj(source - current).
constexpr int kWholeOutput = -1;
constexpr int kNoPatch = -2;

struct Projections {
  int d_model = 0;
  int n_diag = 0;
  const float* diag = nullptr;  // [n_diag, d_model]
  int n_mat = 0;
  const float* mat = nullptr;   // [n_mat, d_model, d_model]
};

struct NodePatch {
  int32_t writer;
  int32_t proj;
};

struct EdgePatch {
  int32_t writer;
  int32_t reader;
  int32_t input;  // ReaderInput
  int32_t proj;
};

// A patch set after validation, indexed for the forward pass.
struct PatchPlan {
  int start_layer = 0;                 // first layer whose computation can differ from the clean run
  std::vector<int32_t> node_proj;      // per writer: kNoPatch or a projection index
  // per (reader * kNumInputs + input): the edges into it as (writer, projection index)
  std::vector<std::vector<std::pair<int32_t, int32_t>>> incoming;
  std::vector<uint8_t> attn_touched;   // per layer: some head there is patched or has a patched input
  std::vector<uint8_t> mlp_touched;    // per layer
  bool output_touched = false;

  const std::vector<std::pair<int32_t, int32_t>>& edges_into(int reader, int input) const {
    return incoming[static_cast<size_t>(reader) * kNumInputs + input];
  }
};

// Validates ids, inputs, projection indices and edge direction (writer strictly upstream of the
// reader); throws std::invalid_argument saying which patch is wrong.
PatchPlan make_plan(const ModelDims& dims, const NodePatch* nodes, int n_nodes, const EdgePatch* edges,
                    int n_edges, const Projections& proj);

enum class Metric : int { kNone = 0, kKL = 1, kLogitDiff = 2, kAccuracy = 3, kMSE = 4 };

}  // namespace rasp
