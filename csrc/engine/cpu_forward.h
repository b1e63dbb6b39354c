// CPU backend: plain, recorded, cached and patched forward passes and patch sweeps over a batch.
// Threads over batch items (and patch sets); each worker owns preallocated scratch buffers.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model.h"
#include "engine/patch.h"

namespace rasp {

// Optional activation sinks in TransformerLens layouts (null = not wanted):
//   [B,T,D]: embed, pos_embed, resid_pre, attn_out, resid_mid, mlp_out, resid_post
//   [B,T,H,E]: q, k, v, z      [B,H,T,T]: scores, pattern      [B,T,H,D]: result   [B,T,M]: mlp_pre/post
struct LayerRecord {
  float *resid_pre = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *z = nullptr, *scores = nullptr,
        *pattern = nullptr, *result = nullptr, *attn_out = nullptr, *resid_mid = nullptr, *mlp_pre = nullptr,
        *mlp_post = nullptr, *mlp_out = nullptr, *resid_post = nullptr;
  bool any_attention() const { return q || k || v || z || scores || pattern || result; }
};
struct Record {
  float *embed = nullptr, *pos_embed = nullptr;
  std::vector<LayerRecord> layers;  // empty or n_layers entries
};

// What a patched run needs from a clean or source run, per batch item.
struct RunCache {
  int B = 0, T = 0;
  ModelDims dims;
  std::vector<float> writer_out;  // [B][n_writers][T][D]: each component's contribution to the residual
  std::vector<float> resid_pre;   // [B][n_layers + 1][T][D]: index n_layers is the final residual
  std::vector<float> resid_mid;   // [B][n_layers][T][D]
  std::vector<float> out;         // [B][T][d_vocab_out]
  // Only when `keep_inner` is set before the run (the clean run of a sweep): each layer's fused q/k/v
  // projection and MLP pre-activation, so a patched run whose residual is still clean at a layer
  // starts from them instead of recomputing them.
  bool keep_inner = false;
  std::vector<float> qkv;         // [B][n_layers][T][3*H*E]
  std::vector<float> mlp_pre;     // [B][n_layers][T][M]

  // Sizes the buffers (keeping their capacity: callers reuse one RunCache across calls, since fresh
  // pages cost a fault each). Contents are unspecified unless `zero`.
  void allocate(const ModelDims& d, int batch, int seq, bool zero = false);
  size_t bytes() const {
    return sizeof(float) * (writer_out.capacity() + resid_pre.capacity() + resid_mid.capacity() + out.capacity() +
                            qkv.capacity() + mlp_pre.capacity());
  }
  void release() {
    const bool keep = keep_inner;
    *this = RunCache();
    keep_inner = keep;
  }
  bool has_inner() const { return keep_inner && !qkv.empty(); }
  size_t qkv_width() const { return static_cast<size_t>(3) * dims.n_heads * dims.d_head; }
  const float* qkv_of(int b, int l) const {
    return qkv.data() + ((static_cast<size_t>(b) * dims.n_layers + l) * T) * qkv_width();
  }
  const float* mlp_pre_of(int b, int l) const {
    return mlp_pre.data() + ((static_cast<size_t>(b) * dims.n_layers + l) * T) * dims.d_mlp;
  }
  const float* writer(int b, int w) const {
    return writer_out.data() + ((static_cast<size_t>(b) * dims.n_writers() + w) * T) * dims.d_model;
  }
  const float* pre(int b, int l) const {
    return resid_pre.data() + ((static_cast<size_t>(b) * (dims.n_layers + 1) + l) * T) * dims.d_model;
  }
  const float* mid(int b, int l) const {
    return resid_mid.data() + ((static_cast<size_t>(b) * dims.n_layers + l) * T) * dims.d_model;
  }
  const float* output(int b) const { return out.data() + static_cast<size_t>(b) * T * dims.d_vocab_out; }
};

// tokens: [B, T] ids in [0, d_vocab) (checked by the caller), T <= n_ctx. out: [B, T, d_vocab_out].
// rec and cache may be null; a non-null cache is allocated here.
void forward_cpu(const Model& m, const int32_t* tokens, int B, int T, float* out, const Record* rec,
                 RunCache* cache, int threads);

// Runs every plan on every batch item, patching from `source` (a cached run on the source tokens, same
// B and T) into the run on `tokens` whose clean cache is `clean`. Per (plan s, item b) it writes
// metric_sum[s*B+b] and metric_count[s*B+b] (the metric summed over counted positions: not BOS,
// not PAD) and, when outs is non-null, the patched output at outs[((s*B+b)*T)*V].
void sweep_cpu(const Model& m, const int32_t* tokens, int B, int T, const RunCache& clean,
               const RunCache& source, const std::vector<PatchPlan>& plans, const Projections& proj,
               Metric metric, float atol, float* metric_sum, float* metric_count, float* outs, int threads);

}  // namespace rasp
