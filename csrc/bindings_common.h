// Python-facing helpers shared by the CPU (bindings.cpp) and CUDA (cuda/cuda_bindings.cpp) engine
// bindings: array checks, model dims/weights parsing, hook tables and patch-set parsing, written once
// so both backends reject bad input with the same messages. Only binding files include this; the C++
// core stays Python-free.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu_forward.h"
#include "engine/model.h"
#include "engine/patch.h"

// Hidden like pybind11's own namespace: these helpers hold pybind11 objects (only the module is exported).
#if defined(__GNUC__)
#define RASP_BIND_HIDDEN __attribute__((visibility("hidden")))
#else
#define RASP_BIND_HIDDEN
#endif

namespace rasp {
namespace bind RASP_BIND_HIDDEN {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

// A C-contiguous array of dtype T and exactly `shape` (-1 = any), or a clear exception.
template <class T>
py::array_t<T> checked(const py::handle& obj, const std::string& what, std::vector<py::ssize_t> shape) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(what + ": expected a numpy array");
  if (!arr.dtype().is(py::dtype::of<T>()))
    throw py::type_error(what + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(arr.dtype())));
  bool ok = arr.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || arr.shape(i) == shape[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < shape.size(); ++i)
      want += (i ? ", " : "") + (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    throw py::value_error(what + ": expected shape " + want + "], got " + shape_str(arr));
  }
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(what + ": expected a C-contiguous array");
  return py::array_t<T>(arr);
}

// Token ids int32 [B, T] with T <= n_ctx and every id in [0, d_vocab), or a clear exception.
inline py::array_t<int32_t> check_tokens(const py::handle& obj, const std::string& what, const ModelDims& d) {
  auto t = checked<int32_t>(obj, what, {-1, -1});
  if (t.shape(1) > d.n_ctx)
    throw py::value_error(what + ": sequence length " + std::to_string(t.shape(1)) + " exceeds n_ctx " +
                          std::to_string(d.n_ctx));
  const int32_t* p = t.data();
  int bad = 0;  // a vectorised test first; the loop that names the id runs only on failure
  for (py::ssize_t i = 0; i < t.size(); ++i) bad |= (p[i] < 0) | (p[i] >= d.d_vocab);
  for (py::ssize_t i = 0; bad && i < t.size(); ++i)
    if (p[i] < 0 || p[i] >= d.d_vocab)
      throw py::value_error(what + ": token id " + std::to_string(p[i]) + " outside [0, " +
                            std::to_string(d.d_vocab) + ")");
  return t;
}

// One pass over ids [B, T] (any count of rows): every id in [0, d_vocab), and BOS (when bos >= 0) at
// position 0 of every row and nowhere else; copies them to `out` as int32 when it is non-null.
// Branch-free per id (vectorised): range and BOS count as reductions, then one look at each row's start.
template <class Id>
bool scan_ids(const Id* p, py::ssize_t B, py::ssize_t T, int64_t d_vocab, int64_t bos, int32_t* out) {
  const py::ssize_t n = B * T;
  int bad = 0;
  py::ssize_t n_bos = 0;
  for (py::ssize_t i = 0; i < n; ++i) {
    bad |= (p[i] < 0) | (p[i] >= d_vocab);
    n_bos += p[i] == bos;
  }
  if (out)
    for (py::ssize_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(p[i]);
  if (bad) return false;
  if (bos < 0) return true;
  if (n_bos != B) return false;  // with one at each row's start, that is every one there is
  for (py::ssize_t b = 0; b < B; ++b)
    if (p[b * T] != bos) return false;
  return true;
}

// scan_ids over a C-contiguous int32/int64 [B, T] array with 1 <= T <= n_ctx; false for any other array
// (the caller then runs its detailed checks, which name the problem).
inline bool ids_valid(const py::array& a, int64_t d_vocab, int64_t n_ctx, int64_t bos, int32_t* out = nullptr) {
  if (a.ndim() != 2 || !(a.flags() & py::array::c_style) || a.shape(1) < 1 || a.shape(1) > n_ctx) return false;
  if (a.dtype().is(py::dtype::of<int64_t>()))
    return scan_ids(static_cast<const int64_t*>(a.data()), a.shape(0), a.shape(1), d_vocab, bos, out);
  if (a.dtype().is(py::dtype::of<int32_t>()))
    return scan_ids(static_cast<const int32_t*>(a.data()), a.shape(0), a.shape(1), d_vocab, bos, out);
  return false;
}

inline bool tokens_valid(const py::array& a, int64_t d_vocab, int64_t n_ctx, int64_t bos) {
  return ids_valid(a, d_vocab, n_ctx, bos);
}

// The dims dict Python passes (keys as in the contract; pad_token_id optional, -1 when absent/None;
// causal optional, false when absent).
inline ModelDims read_dims(const py::dict& dims) {
  auto get = [&](const char* k) { return dims[k].cast<int>(); };
  ModelDims d;
  d.n_layers = get("n_layers");
  d.d_model = get("d_model");
  d.n_heads = get("n_heads");
  d.d_head = get("d_head");
  d.d_mlp = get("d_mlp");
  d.n_ctx = get("n_ctx");
  d.d_vocab = get("d_vocab");
  d.d_vocab_out = get("d_vocab_out");
  d.pad_token_id = dims.contains("pad_token_id") && !dims["pad_token_id"].is_none() ? get("pad_token_id") : -1;
  d.causal = dims.contains("causal") && dims["causal"].cast<bool>();
  return d;
}

// Checks the contract's weight list (W_E, W_pos, 12 per layer, W_U, b_U) and returns views into it;
// `keep` holds the checked arrays alive while the model is built. `who` prefixes the count error.
inline ModelWeightViews weight_views(const py::list& weights, const ModelDims& d, const std::string& who,
                                     std::vector<py::array_t<float>>& keep) {
  const py::ssize_t expect = 4 + 12 * static_cast<py::ssize_t>(d.n_layers);
  if (d.n_layers < 0 || static_cast<py::ssize_t>(weights.size()) != expect)
    throw py::value_error(who + ": expected " + std::to_string(expect) + " weight arrays, got " +
                          std::to_string(weights.size()));
  const py::ssize_t D = d.d_model, H = d.n_heads, E = d.d_head, M = d.d_mlp;
  auto w = [&](py::ssize_t i, const std::string& name, std::vector<py::ssize_t> shape) {
    keep.push_back(checked<float>(weights[i], name, std::move(shape)));
    return keep.back().data();
  };
  ModelWeightViews v;
  v.W_E = w(0, "W_E", {d.d_vocab, D});
  v.W_pos = w(1, "W_pos", {d.n_ctx, D});
  for (int l = 0; l < d.n_layers; ++l) {
    const py::ssize_t o = 2 + 12 * static_cast<py::ssize_t>(l);
    const std::string a = "blocks." + std::to_string(l) + ".attn.", m = "blocks." + std::to_string(l) + ".mlp.";
    LayerWeightViews lv{};
    lv.W_Q = w(o + 0, a + "W_Q", {H, D, E});
    lv.W_K = w(o + 1, a + "W_K", {H, D, E});
    lv.W_V = w(o + 2, a + "W_V", {H, D, E});
    lv.b_Q = w(o + 3, a + "b_Q", {H, E});
    lv.b_K = w(o + 4, a + "b_K", {H, E});
    lv.b_V = w(o + 5, a + "b_V", {H, E});
    lv.W_O = w(o + 6, a + "W_O", {H, E, D});
    lv.b_O = w(o + 7, a + "b_O", {D});
    lv.W_in = w(o + 8, m + "W_in", {D, M});
    lv.b_in = w(o + 9, m + "b_in", {M});
    lv.W_out = w(o + 10, m + "W_out", {M, D});
    lv.b_out = w(o + 11, m + "b_out", {D});
    v.layers.push_back(lv);
  }
  const py::ssize_t o = 2 + 12 * static_cast<py::ssize_t>(d.n_layers);
  v.W_U = w(o, "W_U", {D, d.d_vocab_out});
  v.b_U = w(o + 1, "b_U", {d.d_vocab_out});
  return v;
}

// The logits array [B, T, d_vocab_out] a forward pass over `tokens` fills.
inline py::array_t<float> logits_for(const py::array_t<int32_t>& tokens, const ModelDims& d) {
  return py::array_t<float>({tokens.shape(0), tokens.shape(1), static_cast<py::ssize_t>(d.d_vocab_out)});
}

// Allocates one array per requested (kind, layer) hook and points `rec`'s sinks at them; returns the
// arrays in request order. Unknown kinds, bad layers and repeats raise.
inline py::list record_arrays(const std::vector<std::pair<std::string, int>>& hooks, const ModelDims& d,
                              py::ssize_t B, py::ssize_t T, Record& rec) {
  const py::ssize_t D = d.d_model, H = d.n_heads, E = d.d_head, M = d.d_mlp;
  rec.layers.resize(d.n_layers);
  py::list arrays;
  for (const auto& [kind, layer] : hooks) {
    std::vector<py::ssize_t> shape;
    float** slot = nullptr;
    if (kind == "embed" || kind == "pos_embed") {
      shape = {B, T, D};
      slot = kind == "embed" ? &rec.embed : &rec.pos_embed;
    } else {
      if (layer < 0 || layer >= d.n_layers)
        throw py::value_error("hook " + kind + ": layer " + std::to_string(layer) + " out of range");
      LayerRecord& r = rec.layers[layer];
      if (kind == "resid_pre") { shape = {B, T, D}; slot = &r.resid_pre; }
      else if (kind == "q") { shape = {B, T, H, E}; slot = &r.q; }
      else if (kind == "k") { shape = {B, T, H, E}; slot = &r.k; }
      else if (kind == "v") { shape = {B, T, H, E}; slot = &r.v; }
      else if (kind == "z") { shape = {B, T, H, E}; slot = &r.z; }
      else if (kind == "attn_scores") { shape = {B, H, T, T}; slot = &r.scores; }
      else if (kind == "pattern") { shape = {B, H, T, T}; slot = &r.pattern; }
      else if (kind == "result") { shape = {B, T, H, D}; slot = &r.result; }
      else if (kind == "attn_out") { shape = {B, T, D}; slot = &r.attn_out; }
      else if (kind == "resid_mid") { shape = {B, T, D}; slot = &r.resid_mid; }
      else if (kind == "mlp_pre") { shape = {B, T, M}; slot = &r.mlp_pre; }
      else if (kind == "mlp_post") { shape = {B, T, M}; slot = &r.mlp_post; }
      else if (kind == "mlp_out") { shape = {B, T, D}; slot = &r.mlp_out; }
      else if (kind == "resid_post") { shape = {B, T, D}; slot = &r.resid_post; }
      else throw py::value_error("unknown hook kind '" + kind + "'");
    }
    if (*slot) throw py::value_error("hook " + kind + " of layer " + std::to_string(layer) + " requested twice");
    py::array_t<float> a(shape);
    *slot = a.mutable_data();
    arrays.append(a);
  }
  return arrays;
}

// A sweep's inputs, checked and parsed. The arrays stay referenced here because `proj` and the
// pointers handed to the core point into them.
struct SweepInputs {
  py::array_t<int32_t> tokens, source;  // source empty when none was given
  bool have_source = false;
  py::array_t<int32_t> ov_ids;          // writer ids [K] whose source outputs are replaced
  py::array_t<float> ov_vals;           // their replacement values [K, B, T, D]
  py::array_t<int32_t> nodes, edges;
  py::array_t<int64_t> node_off, edge_off;
  py::array_t<float> diag, mat;
  Metric metric = Metric::kNone;
  Projections proj;
  std::vector<PatchPlan> plans;  // one per patch set
  // Outputs: metric_sum [S, B], metric_count [S, B], outputs [S, B, T, V] or None.
  py::array_t<float> sums, counts;
  py::object outs_obj = py::none();
  float* outs = nullptr;
  // Raw views for the core (valid while this object lives).
  int B = 0, T = 0, K = 0;
  const int32_t* tp = nullptr;     // tokens
  const int32_t* sp = nullptr;     // source tokens, or null
  const int32_t* ov_id = nullptr;  // override writer ids
  const float* ov = nullptr;       // override values
  float* sum_p = nullptr;
  float* cnt_p = nullptr;
};

// Patch sets in flat form: nodes [N, 2] (writer, proj) with node_offsets [S + 1]; edges [E, 4]
// (writer, reader, input, proj) with edge_offsets [S + 1]; source_obj may be None (then every patched
// writer has an override). Checks everything, builds the plans and allocates the outputs.
inline SweepInputs parse_sweep(const ModelDims& d, const py::handle& tokens_obj, const py::object& source_obj,
                               const py::handle& nodes_obj, const py::handle& node_off_obj,
                               const py::handle& edges_obj, const py::handle& edge_off_obj,
                               const py::handle& diag_obj, const py::handle& mat_obj,
                               const std::string& metric_name, bool return_outputs,
                               const py::handle& override_ids_obj, const py::handle& override_obj) {
  SweepInputs in;
  in.tokens = check_tokens(tokens_obj, "tokens", d);
  const auto& tokens = in.tokens;
  in.have_source = !source_obj.is_none();
  if (in.have_source) {
    in.source = check_tokens(source_obj, "source_tokens", d);
    if (in.source.shape(0) != tokens.shape(0) || in.source.shape(1) != tokens.shape(1))
      throw py::value_error("source_tokens shape " + shape_str(in.source) + " differs from tokens shape " +
                            shape_str(tokens));
  }
  in.ov_ids = checked<int32_t>(override_ids_obj, "source override ids", {-1});
  in.ov_vals = checked<float>(override_obj, "source override values",
                              {in.ov_ids.shape(0), tokens.shape(0), tokens.shape(1), d.d_model});
  for (py::ssize_t i = 0; i < in.ov_ids.shape(0); ++i)
    if (in.ov_ids.data()[i] < 0 || in.ov_ids.data()[i] >= d.n_writers())
      throw py::value_error("source override: writer id out of range");
  in.nodes = checked<int32_t>(nodes_obj, "nodes", {-1, 2});
  in.node_off = checked<int64_t>(node_off_obj, "node_offsets", {-1});
  in.edges = checked<int32_t>(edges_obj, "edges", {-1, 4});
  in.edge_off = checked<int64_t>(edge_off_obj, "edge_offsets", {-1});
  const py::ssize_t D = d.d_model;
  in.diag = checked<float>(diag_obj, "projection diagonals", {-1, D});
  in.mat = checked<float>(mat_obj, "projection matrices", {-1, D, D});
  if (in.node_off.shape(0) != in.edge_off.shape(0) || in.node_off.shape(0) < 1)
    throw py::value_error("node_offsets and edge_offsets must both have n_sets + 1 entries");
  const py::ssize_t S = in.node_off.shape(0) - 1;
  if (metric_name == "none") in.metric = Metric::kNone;
  else if (metric_name == "kl") in.metric = Metric::kKL;
  else if (metric_name == "logit_diff") in.metric = Metric::kLogitDiff;
  else if (metric_name == "accuracy") in.metric = Metric::kAccuracy;
  else if (metric_name == "mse") in.metric = Metric::kMSE;
  else throw py::value_error("unknown metric '" + metric_name + "' (kl, logit_diff, accuracy, mse, none)");
  in.proj.d_model = d.d_model;
  in.proj.n_diag = static_cast<int>(in.diag.shape(0));
  in.proj.diag = in.diag.data();
  in.proj.n_mat = static_cast<int>(in.mat.shape(0));
  in.proj.mat = in.mat.data();
  const int64_t* no = in.node_off.data();
  const int64_t* eo = in.edge_off.data();
  in.plans.reserve(S);
  const auto* np = reinterpret_cast<const NodePatch*>(in.nodes.data());
  const auto* ep = reinterpret_cast<const EdgePatch*>(in.edges.data());
  for (py::ssize_t s = 0; s < S; ++s) {
    if (no[s] < 0 || no[s] > no[s + 1] || no[s + 1] > in.nodes.shape(0) || eo[s] < 0 || eo[s] > eo[s + 1] ||
        eo[s + 1] > in.edges.shape(0))
      throw py::value_error("patch set " + std::to_string(s) + ": offsets out of order or out of range");
    try {
      in.plans.push_back(make_plan(d, np + no[s], static_cast<int>(no[s + 1] - no[s]), ep + eo[s],
                                   static_cast<int>(eo[s + 1] - eo[s]), in.proj));
    } catch (const std::invalid_argument& e) {
      throw py::value_error("patch set " + std::to_string(s) + ": " + e.what());
    }
  }
  const py::ssize_t B = tokens.shape(0), T = tokens.shape(1);
  in.sums = py::array_t<float>({S, B});
  in.counts = py::array_t<float>({S, B});
  if (return_outputs) {
    py::array_t<float> o({S, B, T, static_cast<py::ssize_t>(d.d_vocab_out)});
    in.outs = o.mutable_data();
    in.outs_obj = o;
  }
  in.B = static_cast<int>(B);
  in.T = static_cast<int>(T);
  in.K = static_cast<int>(in.ov_ids.shape(0));
  in.tp = tokens.data();
  in.sp = in.have_source ? in.source.data() : nullptr;
  in.ov_id = in.ov_ids.data();
  in.ov = in.ov_vals.data();
  in.sum_p = in.sums.mutable_data();
  in.cnt_p = in.counts.mutable_data();
  return in;
}

// Sparse-matrix sizes and head counts of a built model (the keys both backends' stats() share).
inline py::dict model_stats(const Model& model, const ModelDims& d) {
  py::dict s;
  int64_t nnz = 0, dense = 0;
  auto add = [&](const SparseMat& m) {
    nnz += m.nnz;
    dense += static_cast<int64_t>(m.rows) * m.cols;
  };
  int active = 0;
  for (const auto& L : model.layers) {
    add(L.qkv);
    for (const auto& m : L.wo) add(m);
    add(L.w_in);
    add(L.w_out);
    for (auto a : L.head_active) active += a;
  }
  add(model.w_u);
  s["matrix_nonzeros"] = nnz;
  s["matrix_entries"] = dense;
  s["active_heads"] = active;
  s["n_writers"] = d.n_writers();
  s["n_readers"] = d.n_readers();
  return s;
}

}  // namespace bind
}  // namespace rasp
