// Python face of the CUDA backend: `_engine.CudaEngineCore`, with the same methods and arguments as
// the CPU `EngineCore` (forward, forward_record, sweep, stats) plus `forward_ptr` for device arrays
// (torch CUDA tensors) that never pass through the host. Compiled into the module only when the
// build has CUDA; bindings.cpp calls register_cuda(m).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_api.h"
#include "engine/model.h"
#include "engine/patch.h"

namespace py = pybind11;

namespace rasp::cuda {

namespace {

std::string shape_of(const py::array& a) {
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
  if (!ok) throw py::value_error(what + ": unexpected shape " + shape_of(arr));
  if (!(arr.flags() & py::array::c_style)) throw py::value_error(what + ": expected a C-contiguous array");
  return py::array_t<T>(arr);
}

class CudaEngineCore {
 public:
  CudaEngineCore(const py::dict& dims, const py::list& weights, int device) {
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
    const py::ssize_t expect = 4 + 12 * static_cast<py::ssize_t>(d_.n_layers);
    if (d_.n_layers < 0 || static_cast<py::ssize_t>(weights.size()) != expect)
      throw py::value_error("CudaEngineCore: expected " + std::to_string(expect) + " weight arrays, got " +
                            std::to_string(weights.size()));
    const py::ssize_t D = d_.d_model, H = d_.n_heads, E = d_.d_head, M = d_.d_mlp;
    std::vector<py::array_t<float>> keep;
    auto w = [&](py::ssize_t i, const std::string& name, std::vector<py::ssize_t> shape) {
      keep.push_back(checked<float>(weights[i], name, std::move(shape)));
      return keep.back().data();
    };
    ModelWeightViews v;
    v.W_E = w(0, "W_E", {d_.d_vocab, D});
    v.W_pos = w(1, "W_pos", {d_.n_ctx, D});
    for (int l = 0; l < d_.n_layers; ++l) {
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
    const py::ssize_t o = 2 + 12 * static_cast<py::ssize_t>(d_.n_layers);
    v.W_U = w(o, "W_U", {D, d_.d_vocab_out});
    v.b_U = w(o + 1, "b_U", {d_.d_vocab_out});
    try {
      model_ = build_model(d_, v);
      eng_ = std::make_unique<CudaEngine>(model_, device);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  py::array_t<float> forward(const py::handle& tokens_obj, int threads) {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const int B = static_cast<int>(tokens.shape(0)), T = static_cast<int>(tokens.shape(1));
    py::array_t<float> out({static_cast<py::ssize_t>(B), static_cast<py::ssize_t>(T),
                            static_cast<py::ssize_t>(d_.d_vocab_out)});
    const int32_t* tp = tokens.data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      eng_->forward_host(tp, B, T, op, nullptr);
    }
    (void)threads;
    return out;
  }

  // Device pointers (e.g. torch tensor data_ptr()): tokens int32 [B, T], out float32 [B, T, V].
  void forward_ptr(uintptr_t tokens, int B, int T, uintptr_t out, uintptr_t stream) {
    if (B < 0 || T < 0 || T > d_.n_ctx)
      throw py::value_error("forward_ptr: bad shape [" + std::to_string(B) + ", " + std::to_string(T) +
                            "] (n_ctx " + std::to_string(d_.n_ctx) + ")");
    try {
      py::gil_scoped_release release;
      eng_->forward_device(reinterpret_cast<const int32_t*>(tokens), B, T, reinterpret_cast<float*>(out), stream);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  py::tuple forward_record(const py::handle& tokens_obj, const std::vector<std::pair<std::string, int>>& hooks,
                           int threads) {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const py::ssize_t B = tokens.shape(0), T = tokens.shape(1), D = d_.d_model, H = d_.n_heads, E = d_.d_head,
                      M = d_.d_mlp;
    Record rec;
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
        LayerRecord& r = rec.layers[layer];
        const std::vector<std::pair<const char*, std::pair<float**, std::vector<py::ssize_t>>>> table = {
            {"resid_pre", {&r.resid_pre, {B, T, D}}}, {"q", {&r.q, {B, T, H, E}}},
            {"k", {&r.k, {B, T, H, E}}},              {"v", {&r.v, {B, T, H, E}}},
            {"z", {&r.z, {B, T, H, E}}},              {"attn_scores", {&r.scores, {B, H, T, T}}},
            {"pattern", {&r.pattern, {B, H, T, T}}},  {"result", {&r.result, {B, T, H, D}}},
            {"attn_out", {&r.attn_out, {B, T, D}}},   {"resid_mid", {&r.resid_mid, {B, T, D}}},
            {"mlp_pre", {&r.mlp_pre, {B, T, M}}},     {"mlp_post", {&r.mlp_post, {B, T, M}}},
            {"mlp_out", {&r.mlp_out, {B, T, D}}},     {"resid_post", {&r.resid_post, {B, T, D}}}};
        for (const auto& [name, entry] : table)
          if (kind == name) {
            slot = entry.first;
            shape = entry.second;
          }
        if (!slot) throw py::value_error("unknown hook kind '" + kind + "'");
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
      eng_->forward_host(tp, static_cast<int>(B), static_cast<int>(T), op, &rec);
    }
    (void)threads;
    return py::make_tuple(out, arrays);
  }

  // As EngineCore.sweep: source_obj may be None (then every patched writer has an override); override
  // writer ids [K] and values [K, B, T, D] replace the source run's outputs of those writers.
  py::tuple sweep(const py::handle& tokens_obj, const py::object& source_obj, const py::handle& nodes_obj,
                  const py::handle& node_off_obj, const py::handle& edges_obj, const py::handle& edge_off_obj,
                  const py::handle& diag_obj, const py::handle& mat_obj, const std::string& metric_name, float atol,
                  bool return_outputs, const py::handle& override_ids_obj, const py::handle& override_obj,
                  int threads) {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const bool have_source = !source_obj.is_none();
    py::array_t<int32_t> source;
    if (have_source) {
      source = check_tokens(source_obj, "source_tokens");
      if (source.shape(0) != tokens.shape(0) || source.shape(1) != tokens.shape(1))
        throw py::value_error("source_tokens shape " + shape_of(source) + " differs from tokens shape " +
                              shape_of(tokens));
    }
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
    Metric metric;
    if (metric_name == "none") metric = Metric::kNone;
    else if (metric_name == "kl") metric = Metric::kKL;
    else if (metric_name == "logit_diff") metric = Metric::kLogitDiff;
    else if (metric_name == "accuracy") metric = Metric::kAccuracy;
    else if (metric_name == "mse") metric = Metric::kMSE;
    else throw py::value_error("unknown metric '" + metric_name + "' (kl, logit_diff, accuracy, mse, none)");
    Projections proj;
    proj.d_model = d_.d_model;
    proj.n_diag = static_cast<int>(diag.shape(0));
    proj.diag = diag.data();
    proj.n_mat = static_cast<int>(mat.shape(0));
    proj.mat = mat.data();
    const int64_t* no = node_off.data();
    const int64_t* eo = edge_off.data();
    std::vector<PatchPlan> plans;
    plans.reserve(S);
    const auto* np = reinterpret_cast<const NodePatch*>(nodes.data());
    const auto* ep = reinterpret_cast<const EdgePatch*>(edges.data());
    for (py::ssize_t s = 0; s < S; ++s) {
      if (no[s] < 0 || no[s] > no[s + 1] || no[s + 1] > nodes.shape(0) || eo[s] < 0 || eo[s] > eo[s + 1] ||
          eo[s + 1] > edges.shape(0))
        throw py::value_error("patch set " + std::to_string(s) + ": offsets out of order or out of range");
      try {
        plans.push_back(make_plan(d_, np + no[s], static_cast<int>(no[s + 1] - no[s]), ep + eo[s],
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
    const int K = static_cast<int>(ov_ids.shape(0));
    const int32_t* ov_id = ov_ids.data();
    const float* ov = ov_vals.data();
    float* sum_p = sums.mutable_data();
    float* cnt_p = counts.mutable_data();
    {
      py::gil_scoped_release release;
      eng_->sweep_host(tp, sp, B, T, K, ov_id, ov, plans, proj, metric, atol, sum_p, cnt_p, outs);
    }
    (void)threads;
    return py::make_tuple(sums, counts, outs_obj);
  }

  py::dict stats() const {
    py::dict s;
    int64_t nnz = 0, dense = 0;
    auto add = [&](const SparseMat& m) {
      nnz += m.nnz;
      dense += static_cast<int64_t>(m.rows) * m.cols;
    };
    int active = 0;
    for (const auto& L : model_.layers) {
      add(L.qkv);
      for (const auto& m : L.wo) add(m);
      add(L.w_in);
      add(L.w_out);
      for (auto a : L.head_active) active += a;
    }
    add(model_.w_u);
    s["matrix_nonzeros"] = nnz;
    s["matrix_entries"] = dense;
    s["active_heads"] = active;
    s["n_writers"] = d_.n_writers();
    s["n_readers"] = d_.n_readers();
    s["device"] = eng_->device_name();
    s["block_threads"] = eng_->block_threads();
    return s;
  }

  int device() const { return eng_->device(); }
  void set_block_threads(int n) {
    try {
      eng_->set_block_threads(n);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
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

  ModelDims d_;
  Model model_;
  std::unique_ptr<CudaEngine> eng_;
};

}  // namespace

void register_cuda(py::module_& m) {
  py::class_<CudaEngineCore>(m, "CudaEngineCore",
                             "A compiled model's weights on a CUDA device (same methods as EngineCore).")
      .def(py::init<const py::dict&, const py::list&, int>(), py::arg("dims"), py::arg("weights"),
           py::arg("device") = 0)
      .def("forward", &CudaEngineCore::forward, py::arg("tokens"), py::arg("threads") = 0)
      .def("forward_ptr", &CudaEngineCore::forward_ptr, py::arg("tokens_ptr"), py::arg("batch"), py::arg("seq"),
           py::arg("out_ptr"), py::arg("stream") = 0,
           "Device arrays in and out: int32 tokens [B, T] and float32 out [B, T, V] at these addresses.")
      .def("forward_record", &CudaEngineCore::forward_record, py::arg("tokens"), py::arg("hooks"),
           py::arg("threads") = 0)
      .def("sweep", &CudaEngineCore::sweep, py::arg("tokens"), py::arg("source_tokens"), py::arg("nodes"),
           py::arg("node_offsets"), py::arg("edges"), py::arg("edge_offsets"), py::arg("proj_diag"),
           py::arg("proj_mat"), py::arg("metric"), py::arg("atol"), py::arg("return_outputs"),
           py::arg("override_ids"), py::arg("override_values"), py::arg("threads") = 0)
      .def("stats", &CudaEngineCore::stats)
      .def("device", &CudaEngineCore::device)
      .def("set_block_threads", &CudaEngineCore::set_block_threads, py::arg("threads"));
  m.def("cuda_device_count", &device_count, "CUDA devices visible to the runtime (0 without a driver).");
}

}  // namespace rasp::cuda
