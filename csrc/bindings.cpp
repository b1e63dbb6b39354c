// The one door between Python and the C++ core: every array is checked here (dtype, shape,
// contiguity) and turned into plain pointers; the core never sees Python. The GIL is released
// around every computation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/parallel.h"
#include "engine/cpu_forward.h"
#include "engine/model.h"
#include "engine/patch.h"
#include "kernels/matmul.h"
#ifdef RASP_HAVE_CUDA
#include "cuda/cuda_api.h"
#include "cuda/cuda_bindings.h"
#endif

namespace py = pybind11;

namespace {

// Returns `obj` as a C-contiguous float32 array of the given rank, or raises a clear error.
py::array_t<float> as_f32(const py::handle& obj, const char* what, int ndim) {
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::type_error(std::string(what) + ": expected a numpy array (buffer protocol)");
  if (!arr.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(what) + ": expected dtype float32, got " +
                         std::string(py::str(arr.dtype())));
  if (arr.ndim() != ndim)
    throw py::value_error(std::string(what) + ": expected " + std::to_string(ndim) + "-D array, got " +
                          std::to_string(arr.ndim()) + "-D");
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(std::string(what) + ": expected a C-contiguous array (use np.ascontiguousarray)");
  return py::array_t<float>(arr);
}

py::array_t<float> matmul(const py::handle& a_obj, const py::handle& b_obj, int threads) {
  auto a = as_f32(a_obj, "matmul: a", 2);
  auto b = as_f32(b_obj, "matmul: b", 2);
  const auto m = a.shape(0), k = a.shape(1), k2 = b.shape(0), n = b.shape(1);
  if (k != k2)
    throw py::value_error("matmul: inner dimensions differ: a is [" + std::to_string(m) + ", " +
                          std::to_string(k) + "], b is [" + std::to_string(k2) + ", " + std::to_string(n) + "]");
  py::array_t<float> c({m, n});
  const float* pa = a.data();
  const float* pb = b.data();
  float* pc = c.mutable_data();
  {
    py::gil_scoped_release release;
    rasp::matmul_f32(pa, pb, pc, m, k, n, threads);
  }
  return c;
}


std::string shape_str(const py::array& a) {
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

// The engine object Python holds: a copy of the model's weights plus the backend entry points.
class EngineCore {
 public:
  EngineCore(const py::dict& dims, const py::list& weights) {
    auto get = [&](const char* k) { return dims[k].cast<int>(); };
    d_.n_layers = get("n_layers");
    d_.d_model = get("d_model");
    d_.n_heads = get("n_heads");
    d_.d_head = get("d_head");
    d_.d_mlp = get("d_mlp");
    d_.n_ctx = get("n_ctx");
    d_.d_vocab = get("d_vocab");
    d_.d_vocab_out = get("d_vocab_out");
    d_.pad_token_id = dims.contains("pad_token_id") && !dims["pad_token_id"].is_none() ? get("pad_token_id") : -1;
    if (d_.n_layers < 0 || d_.d_model < 1 || d_.n_heads < 0 || d_.d_head < 0 || d_.d_mlp < 0 || d_.n_ctx < 1 ||
        d_.d_vocab < 1 || d_.d_vocab_out < 1 || d_.pad_token_id >= d_.d_vocab)
      throw py::value_error("EngineCore: invalid model dimensions");
    const py::ssize_t expect = 4 + 12 * static_cast<py::ssize_t>(d_.n_layers);
    if (static_cast<py::ssize_t>(weights.size()) != expect)
      throw py::value_error("EngineCore: expected " + std::to_string(expect) + " weight arrays, got " +
                            std::to_string(weights.size()));
    const py::ssize_t D = d_.d_model, H = d_.n_heads, E = d_.d_head, M = d_.d_mlp;
    std::vector<py::array_t<float>> keep;  // holds references while the model is built
    auto w = [&](py::ssize_t i, const std::string& name, std::vector<py::ssize_t> shape) {
      keep.push_back(checked<float>(weights[i], name, std::move(shape)));
      return keep.back().data();
    };
    rasp::ModelWeightViews v;
    v.W_E = w(0, "W_E", {d_.d_vocab, D});
    v.W_pos = w(1, "W_pos", {d_.n_ctx, D});
    for (int l = 0; l < d_.n_layers; ++l) {
      const py::ssize_t o = 2 + 12 * static_cast<py::ssize_t>(l);
      const std::string a = "blocks." + std::to_string(l) + ".attn.", m = "blocks." + std::to_string(l) + ".mlp.";
      rasp::LayerWeightViews lv{};
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
    const py::ssize_t o = 2 + 12 * static_cast<py::ssize_t>(d_.n_layers);
    v.W_U = w(o, "W_U", {D, d_.d_vocab_out});
    v.b_U = w(o + 1, "b_U", {d_.d_vocab_out});
    try {
      model_ = rasp::build_model(d_, v);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  py::array_t<float> forward(const py::handle& tokens_obj, int threads) const {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const int B = static_cast<int>(tokens.shape(0)), T = static_cast<int>(tokens.shape(1));
    py::array_t<float> out({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(T),
                            static_cast<py::ssize_t>(d_.d_vocab_out)});
    const int32_t* tp = tokens.data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      rasp::forward_cpu(model_, tp, B, T, op, nullptr, nullptr, threads);
    }
    return out;
  }

  // hooks: (kind, layer) pairs; returns (out, [arrays in the same order]).
  py::tuple forward_record(const py::handle& tokens_obj, const std::vector<std::pair<std::string, int>>& hooks,
                           int threads) const {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const py::ssize_t B = tokens.shape(0), T = tokens.shape(1), D = d_.d_model, H = d_.n_heads, E = d_.d_head,
                      M = d_.d_mlp;
    rasp::Record rec;
    rec.layers.resize(d_.n_layers);
    py::list arrays;
    for (const auto& [kind, layer] : hooks) {
      std::vector<py::ssize_t> shape;
      float** slot = nullptr;
      if (kind == "embed" || kind == "pos_embed") {
        shape = {B, T, D};
        slot = kind == "embed" ? &rec.embed : &rec.pos_embed;
      } else {
        if (layer < 0 || layer >= d_.n_layers)
          throw py::value_error("hook " + kind + ": layer " + std::to_string(layer) + " out of range");
        rasp::LayerRecord& r = rec.layers[layer];
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
    py::array_t<float> out({B, T, static_cast<py::ssize_t>(d_.d_vocab_out)});
    const int32_t* tp = tokens.data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      rasp::forward_cpu(model_, tp, static_cast<int>(B), static_cast<int>(T), op, &rec, nullptr, threads);
    }
    return py::make_tuple(out, arrays);
  }

  // Patch sets in flat form: nodes [N, 2] (writer, proj) with node_offsets [S + 1]; edges [E, 4]
  // (writer, reader, input, proj) with edge_offsets [S + 1]. Returns (metric_sum [S, B],
  // metric_count [S, B], outputs [S, B, T, V] or None).
  py::tuple sweep(const py::handle& tokens_obj, const py::object& source_obj, const py::handle& nodes_obj,
                  const py::handle& node_off_obj, const py::handle& edges_obj, const py::handle& edge_off_obj,
                  const py::handle& diag_obj, const py::handle& mat_obj, const std::string& metric_name, float atol,
                  bool return_outputs, const py::handle& override_ids_obj, const py::handle& override_obj,
                  int threads) const {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const bool have_source = !source_obj.is_none();
    py::array_t<int32_t> source;
    if (have_source) {
      source = check_tokens(source_obj, "source_tokens");
      if (source.shape(0) != tokens.shape(0) || source.shape(1) != tokens.shape(1))
        throw py::value_error("source_tokens shape " + shape_str(source) + " differs from tokens shape " +
                              shape_str(tokens));
    }
    // Writer outputs that replace the source run's (mean / zero ablation): ids [K], values [K, B, T, D].
    auto ov_ids = checked<int32_t>(override_ids_obj, "source override ids", {-1});
    auto ov_vals = checked<float>(override_obj, "source override values",
                                  {ov_ids.shape(0), tokens.shape(0), tokens.shape(1), d_.d_model});
    for (py::ssize_t i = 0; i < ov_ids.shape(0); ++i)
      if (ov_ids.data()[i] < 0 || ov_ids.data()[i] >= d_.n_writers())
        throw py::value_error("source override: writer id out of range");
    auto nodes = checked<int32_t>(nodes_obj, "nodes", {-1, 2});
    auto node_off = checked<int64_t>(node_off_obj, "node_offsets", {-1});
    auto edges = checked<int32_t>(edges_obj, "edges", {-1, 4});
    auto edge_off = checked<int64_t>(edge_off_obj, "edge_offsets", {-1});
    const py::ssize_t D = d_.d_model;
    auto diag = checked<float>(diag_obj, "projection diagonals", {-1, D});
    auto mat = checked<float>(mat_obj, "projection matrices", {-1, D, D});
    if (node_off.shape(0) != edge_off.shape(0) || node_off.shape(0) < 1)
      throw py::value_error("node_offsets and edge_offsets must both have n_sets + 1 entries");
    const py::ssize_t S = node_off.shape(0) - 1;
    rasp::Metric metric;
    if (metric_name == "none") metric = rasp::Metric::kNone;
    else if (metric_name == "kl") metric = rasp::Metric::kKL;
    else if (metric_name == "logit_diff") metric = rasp::Metric::kLogitDiff;
    else if (metric_name == "accuracy") metric = rasp::Metric::kAccuracy;
    else if (metric_name == "mse") metric = rasp::Metric::kMSE;
    else throw py::value_error("unknown metric '" + metric_name + "' (kl, logit_diff, accuracy, mse, none)");
    rasp::Projections proj;
    proj.d_model = d_.d_model;
    proj.n_diag = static_cast<int>(diag.shape(0));
    proj.diag = diag.data();
    proj.n_mat = static_cast<int>(mat.shape(0));
    proj.mat = mat.data();
    const int64_t* no = node_off.data();
    const int64_t* eo = edge_off.data();
    std::vector<rasp::PatchPlan> plans;
    plans.reserve(S);
    const auto* np = reinterpret_cast<const rasp::NodePatch*>(nodes.data());
    const auto* ep = reinterpret_cast<const rasp::EdgePatch*>(edges.data());
    for (py::ssize_t s = 0; s < S; ++s) {
      if (no[s] < 0 || no[s] > no[s + 1] || no[s + 1] > nodes.shape(0) || eo[s] < 0 || eo[s] > eo[s + 1] ||
          eo[s + 1] > edges.shape(0))
        throw py::value_error("patch set " + std::to_string(s) + ": offsets out of order or out of range");
      try {
        plans.push_back(rasp::make_plan(d_, np + no[s], static_cast<int>(no[s + 1] - no[s]), ep + eo[s],
                                        static_cast<int>(eo[s + 1] - eo[s]), proj));
      } catch (const std::invalid_argument& e) {
        throw py::value_error("patch set " + std::to_string(s) + ": " + e.what());
      }
    }
    const int B = static_cast<int>(tokens.shape(0)), T = static_cast<int>(tokens.shape(1));
    py::array_t<float> sums({S, static_cast<py::ssize_t>(B)}), counts({S, static_cast<py::ssize_t>(B)});
    py::object outs_obj = py::none();
    float* outs = nullptr;
    if (return_outputs) {
      py::array_t<float> o({S, static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(T),
                            static_cast<py::ssize_t>(d_.d_vocab_out)});
      outs = o.mutable_data();
      outs_obj = o;
    }
    const int32_t* tp = tokens.data();
    const int32_t* sp = have_source ? source.data() : nullptr;
    float* sum_p = sums.mutable_data();
    float* cnt_p = counts.mutable_data();
    const int K = static_cast<int>(ov_ids.shape(0));
    const int32_t* ov_id = ov_ids.data();
    const float* ov = ov_vals.data();
    {
      py::gil_scoped_release release;
      // The caches live in the engine between calls (fresh pages cost a fault each); one call at a time.
      std::lock_guard<std::mutex> lock(mu_);
      rasp::RunCache& clean = clean_;
      rasp::RunCache& src = src_;
      // A sweep on exactly the inputs of the previous one (ACDC's steps, threshold sweeps) reuses its
      // clean and source runs: the keys are the token ids (and source overrides) they were made from.
      const size_t BT = static_cast<size_t>(B) * T;
      const size_t TD = static_cast<size_t>(T) * d_.d_model;
      const size_t n_ov = static_cast<size_t>(K) * B * TD;
      auto same_ids = [BT](const std::vector<int32_t>& key, const int32_t* p) {
        return key.size() == BT && std::equal(p, p + BT, key.begin());
      };
      const bool clean_hit = clean_valid_ && clean.B == B && clean.T == T && same_ids(clean_key_, tp);
      if (!clean_hit) {
        clean_valid_ = false;
        clean.keep_inner = true;
        rasp::forward_cpu(model_, tp, B, T, nullptr, nullptr, &clean, threads);
        clean_key_.assign(tp, tp + BT);
        clean_valid_ = true;
      }
      const bool src_hit = src_valid_ && src.B == B && src.T == T && src_has_tokens_ == (sp != nullptr) &&
                           (!sp || same_ids(src_key_, sp)) && src_ov_ids_.size() == static_cast<size_t>(K) &&
                           std::equal(ov_id, ov_id + K, src_ov_ids_.begin()) && src_ov_vals_.size() == n_ov &&
                           (n_ov == 0 || std::memcmp(ov, src_ov_vals_.data(), n_ov * sizeof(float)) == 0);
      if (!src_hit) {
        src_valid_ = false;
        if (sp) rasp::forward_cpu(model_, sp, B, T, nullptr, nullptr, &src, threads);
        else src.allocate(d_, B, T, /*zero=*/true);  // no source run: every patched writer has an override
        for (int k = 0; k < K; ++k)
          for (int b = 0; b < B; ++b)
            std::copy(ov + (static_cast<size_t>(k) * B + b) * TD, ov + (static_cast<size_t>(k) * B + b + 1) * TD,
                      const_cast<float*>(src.writer(b, ov_id[k])));
        src_has_tokens_ = sp != nullptr;
        if (sp) src_key_.assign(sp, sp + BT);
        else src_key_.clear();
        src_ov_ids_.assign(ov_id, ov_id + K);
        src_ov_vals_.assign(ov, ov + n_ov);
        src_valid_ = true;
      }
      rasp::sweep_cpu(model_, tp, B, T, clean, src, plans, proj, metric, atol, sum_p, cnt_p, outs, threads);
      if (clean.bytes() + src.bytes() > kKeepCacheBytes) {  // do not hold big buffers between calls
        clean.release();
        src.release();
        clean_valid_ = src_valid_ = false;
      }
    }
    return py::make_tuple(sums, counts, outs_obj);
  }

  // Drops the clean/source runs kept from the last sweep (the next sweep recomputes them).
  void forget_runs() const {
    std::lock_guard<std::mutex> lock(mu_);
    clean_valid_ = src_valid_ = false;
  }

  py::dict stats() const {
    py::dict s;
    int64_t nnz = 0, dense = 0;
    auto add = [&](const rasp::SparseMat& m) {
      nnz += m.nnz;
      dense += static_cast<int64_t>(m.rows) * m.cols;
    };
    for (const auto& L : model_.layers) {
      add(L.qkv);
      for (const auto& m : L.wo) add(m);
      add(L.w_in);
      add(L.w_out);
    }
    add(model_.w_u);
    int active = 0;
    for (const auto& L : model_.layers)
      for (auto a : L.head_active) active += a;
    s["matrix_nonzeros"] = nnz;
    s["matrix_entries"] = dense;
    s["active_heads"] = active;
    s["n_writers"] = d_.n_writers();
    s["n_readers"] = d_.n_readers();
    return s;
  }

 private:
  py::array_t<int32_t> check_tokens(const py::handle& obj, const std::string& what) const {
    auto t = checked<int32_t>(obj, what, {-1, -1});
    if (t.shape(1) > d_.n_ctx)
      throw py::value_error(what + ": sequence length " + std::to_string(t.shape(1)) + " exceeds n_ctx " +
                            std::to_string(d_.n_ctx));
    const int32_t* p = t.data();
    for (py::ssize_t i = 0; i < t.size(); ++i)
      if (p[i] < 0 || p[i] >= d_.d_vocab)
        throw py::value_error(what + ": token id " + std::to_string(p[i]) + " outside [0, " +
                              std::to_string(d_.d_vocab) + ")");
    return t;
  }

  static constexpr size_t kKeepCacheBytes = size_t{64} << 20;
  rasp::ModelDims d_;
  rasp::Model model_;
  mutable std::mutex mu_;         // guards the reusable caches below
  mutable rasp::RunCache clean_;  // clean-run cache of the last sweep (reused buffers)
  mutable rasp::RunCache src_;    // source-run cache of the last sweep
  // What clean_ / src_ were computed from (valid flags false after a release or a failed run).
  mutable bool clean_valid_ = false, src_valid_ = false, src_has_tokens_ = false;
  mutable std::vector<int32_t> clean_key_, src_key_, src_ov_ids_;
  mutable std::vector<float> src_ov_vals_;
};

bool cuda_available() {
#ifdef RASP_HAVE_CUDA
  return rasp::cuda::device_count() > 0;
#else
  return false;
#endif
}

py::dict build_info() {
  py::dict d;
  d["version"] = RASP_VERSION;
  d["build_type"] = RASP_BUILD_TYPE;
  d["compiler"] = RASP_CXX_COMPILER;
  d["threads"] = RASP_THREADS;
  d["default_threads"] = rasp::default_threads();
  d["native"] = static_cast<bool>(RASP_NATIVE_BUILD);
  d["sanitize"] = static_cast<bool>(RASP_SANITIZE_BUILD);
#ifdef RASP_HAVE_CUDA
  d["cuda_built"] = true;
  d["cuda_devices"] = rasp::cuda::device_count();
  d["cuda_device_name"] = rasp::cuda::device_name();
#else
  d["cuda_built"] = false;
  d["cuda_devices"] = 0;
  d["cuda_device_name"] = "";
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "rasp_compiler's C++ engine (private: use rasp_compiler.engine)";
  m.attr("__version__") = RASP_VERSION;
  m.def("build_info", &build_info, "How this extension was built: version, threads backend, CUDA, sanitizers.");
  m.def("cuda_available", &cuda_available, "True when CUDA kernels were built AND a CUDA device is visible.");
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("threads") = 0,
        "float32 dense matmul a[M,K] @ b[K,N] -> [M,N]; threads<=0 uses the default.");
  py::class_<EngineCore>(m, "EngineCore", "A compiled model's weights held by the C++ engine (CPU backend).")
      .def(py::init<const py::dict&, const py::list&>(), py::arg("dims"), py::arg("weights"))
      .def("forward", &EngineCore::forward, py::arg("tokens"), py::arg("threads") = 0)
      .def("forward_record", &EngineCore::forward_record, py::arg("tokens"), py::arg("hooks"),
           py::arg("threads") = 0)
      .def("sweep", &EngineCore::sweep, py::arg("tokens"), py::arg("source_tokens"), py::arg("nodes"),
           py::arg("node_offsets"), py::arg("edges"), py::arg("edge_offsets"), py::arg("proj_diag"),
           py::arg("proj_mat"), py::arg("metric"), py::arg("atol"), py::arg("return_outputs"),
           py::arg("override_ids"), py::arg("override_values"), py::arg("threads") = 0)
      .def("forget_runs", &EngineCore::forget_runs)
      .def("stats", &EngineCore::stats);
#ifdef RASP_HAVE_CUDA
  m.def("cuda_smoke_test", [] {
    py::gil_scoped_release release;
    return rasp::cuda::smoke_test();
  }, "Runs a tiny vector-add kernel on device 0; False when no GPU.");
  rasp::cuda::register_cuda(m);
#endif
}
