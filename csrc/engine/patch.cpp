#include "engine/patch.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace rasp {

namespace {
void check_proj(int p, const Projections& proj, const std::string& what) {
  if (p == kWholeOutput) return;
  if (p < 0 || p >= proj.n_diag + proj.n_mat)
    throw std::invalid_argument(what + ": projection index " + std::to_string(p) + " out of range");
}
}  // namespace

PatchPlan make_plan(const ModelDims& d, const NodePatch* nodes, int n_nodes, const EdgePatch* edges,
                    int n_edges, const Projections& proj) {
  PatchPlan plan;
  const int nw = d.n_writers(), nr = d.n_readers();
  plan.node_proj.assign(nw, kNoPatch);
  plan.incoming.assign(static_cast<size_t>(nr) * kNumInputs, {});
  plan.attn_touched.assign(d.n_layers, 0);
  plan.mlp_touched.assign(d.n_layers, 0);
  plan.start_layer = d.n_layers;
  for (int i = 0; i < n_nodes; ++i) {
    const NodePatch& np = nodes[i];
    const std::string what = "node patch #" + std::to_string(i);
    if (np.writer < 0 || np.writer >= nw) throw std::invalid_argument(what + ": writer id out of range");
    check_proj(np.proj, proj, what);
    if (plan.node_proj[np.writer] != kNoPatch)
      throw std::invalid_argument(what + ": the same component is patched twice in one set");
    plan.node_proj[np.writer] = np.proj;
    const int l = d.writer_layer(np.writer);
    plan.start_layer = std::min(plan.start_layer, std::max(l, 0));
    if (l >= 0) (d.writer_is_mlp(np.writer) ? plan.mlp_touched : plan.attn_touched)[l] = 1;
  }
  for (int i = 0; i < n_edges; ++i) {
    const EdgePatch& e = edges[i];
    const std::string what = "edge patch #" + std::to_string(i);
    if (e.writer < 0 || e.writer >= nw) throw std::invalid_argument(what + ": writer id out of range");
    if (e.reader < 0 || e.reader >= nr) throw std::invalid_argument(what + ": reader id out of range");
    check_proj(e.proj, proj, what);
    const bool reader_mlp = d.reader_is_mlp(e.reader), reader_out = e.reader == d.output_reader();
    if (reader_mlp || reader_out) {
      if (e.input != kInputIn) throw std::invalid_argument(what + ": MLP and output readers take input 'in'");
    } else if (e.input < kInputQ || e.input > kInputV) {
      throw std::invalid_argument(what + ": head readers take input q, k or v");
    }
    const int wl = d.writer_layer(e.writer), rl = d.reader_layer(e.reader);
    const bool upstream = wl < rl || (wl == rl && !d.writer_is_mlp(e.writer) && reader_mlp);
    if (!upstream) throw std::invalid_argument(what + ": the writer is not upstream of the reader");
    auto& list = plan.incoming[static_cast<size_t>(e.reader) * kNumInputs + e.input];
    for (const auto& pr : list)
      if (pr.first == e.writer) throw std::invalid_argument(what + ": the same edge is patched twice in one set");
    list.emplace_back(e.writer, e.proj);
    plan.start_layer = std::min(plan.start_layer, rl);
    if (reader_out) plan.output_touched = true;
    else (reader_mlp ? plan.mlp_touched : plan.attn_touched)[rl] = 1;
  }
  return plan;
}

}  // namespace rasp
