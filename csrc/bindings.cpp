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

#include "bindings_common.h"
#include "common/parallel.h"
#include "engine/cpu_forward.h"
#include "engine/feature_major.h"
#include "engine/model.h"
#include "engine/patch.h"
#ifdef RASP_HAVE_CUDA
#include "cuda/cuda_api.h"
#include "cuda/cuda_bindings.h"
#endif

namespace py = pybind11;
namespace bind = rasp::bind;

namespace {

// The engine object Python holds: a copy of the model's weights plus the backend entry points.
class EngineCore {
 public:
  EngineCore(const py::dict& dims, const py::list& weights) : d_(bind::read_dims(dims)) {
    if (d_.n_layers < 0 || d_.d_model < 1 || d_.n_heads < 0 || d_.d_head < 0 || d_.d_mlp < 0 || d_.n_ctx < 1 ||
        d_.d_vocab < 1 || d_.d_vocab_out < 1 || d_.pad_token_id >= d_.d_vocab)
      throw py::value_error("EngineCore: invalid model dimensions");
    std::vector<py::array_t<float>> keep;  // holds references while the model is built
    const rasp::ModelWeightViews v = bind::weight_views(weights, d_, "EngineCore", keep);
    try {
      model_ = rasp::build_model(d_, v);
      packed_ = rasp::pack_model(model_);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }

  py::array_t<float> forward(const py::handle& tokens_obj, int threads) const {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const int B = static_cast<int>(tokens.shape(0)), T = static_cast<int>(tokens.shape(1));
    py::array_t<float> out = bind::logits_for(tokens, d_);
    const int32_t* tp = tokens.data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      rasp::forward_feature_major(model_, packed_, tp, B, T, op, threads);
    }
    return out;
  }

  // The common case of `forward` in one step: ids [B, T] (int32 or int64) checked (range, BOS) and copied in
  // one pass, then the batched forward. None when the ids are not valid: the caller's checks say why.
  py::object forward_ids(const py::array& tokens, int64_t bos, int threads) const {
    const py::ssize_t B = tokens.ndim() == 2 ? tokens.shape(0) : 0, T = tokens.ndim() == 2 ? tokens.shape(1) : 0;
    std::vector<int32_t> ids(static_cast<size_t>(B * T));
    if (!bind::ids_valid(tokens, d_.d_vocab, d_.n_ctx, bos, ids.data())) return py::none();
    py::array_t<float> out({B, T, static_cast<py::ssize_t>(d_.d_vocab_out)});
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      rasp::forward_feature_major(model_, packed_, ids.data(), static_cast<int>(B), static_cast<int>(T), op, threads);
    }
    return std::move(out);
  }

  // hooks: (kind, layer) pairs; returns (out, [arrays in the same order]). The batched forward writes them;
  // per_sequence takes the one-sequence-at-a-time path instead (the reference it is tested against).
  py::tuple forward_record(const py::handle& tokens_obj, const std::vector<std::pair<std::string, int>>& hooks,
                           int threads, bool per_sequence) const {
    auto tokens = check_tokens(tokens_obj, "tokens");
    const py::ssize_t B = tokens.shape(0), T = tokens.shape(1);
    rasp::Record rec;
    py::list arrays = bind::record_arrays(hooks, d_, B, T, rec);
    py::array_t<float> out = bind::logits_for(tokens, d_);
    const int32_t* tp = tokens.data();
    float* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      if (per_sequence)  // the reference path the batched forward is tested against
        rasp::forward_cpu(model_, tp, static_cast<int>(B), static_cast<int>(T), op, &rec, nullptr, threads);
      else
        rasp::forward_feature_major(model_, packed_, tp, static_cast<int>(B), static_cast<int>(T), op, threads, &rec);
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
    bind::SweepInputs in = bind::parse_sweep(d_, tokens_obj, source_obj, nodes_obj, node_off_obj, edges_obj,
                                             edge_off_obj, diag_obj, mat_obj, metric_name, return_outputs,
                                             override_ids_obj, override_obj);
    const int B = in.B, T = in.T, K = in.K;
    const int32_t *tp = in.tp, *sp = in.sp, *ov_id = in.ov_id;
    const float* ov = in.ov;
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
      rasp::sweep_cpu(model_, tp, B, T, clean, src, in.plans, in.proj, in.metric, atol, in.sum_p, in.cnt_p,
                      in.outs, threads);
      if (clean.bytes() + src.bytes() > kKeepCacheBytes) {  // do not hold big buffers between calls
        clean.release();
        src.release();
        clean_valid_ = src_valid_ = false;
      }
    }
    return py::make_tuple(in.sums, in.counts, in.outs_obj);
  }

  // Drops the clean/source runs kept from the last sweep (the next sweep recomputes them).
  void forget_runs() const {
    std::lock_guard<std::mutex> lock(mu_);
    clean_valid_ = src_valid_ = false;
  }

  py::dict stats() const { return bind::model_stats(model_, d_); }

 private:
  py::array_t<int32_t> check_tokens(const py::handle& obj, const std::string& what) const {
    return bind::check_tokens(obj, what, d_);
  }

  static constexpr size_t kKeepCacheBytes = size_t{64} << 20;
  rasp::ModelDims d_;
  rasp::Model model_;
  rasp::PackedModel packed_;
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
  m.def("tokens_valid", &bind::tokens_valid, py::arg("tokens"), py::arg("d_vocab"), py::arg("n_ctx"), py::arg("bos"),
        "One pass over int32/int64 ids [B, T]: in range, T in [1, n_ctx], BOS (if bos >= 0) only at position 0.");
  m.def("cuda_available", &cuda_available, "True when CUDA kernels were built AND a CUDA device is visible.");
  py::class_<EngineCore>(m, "EngineCore", "A compiled model's weights held by the C++ engine (CPU backend).")
      .def(py::init<const py::dict&, const py::list&>(), py::arg("dims"), py::arg("weights"))
      .def("forward", &EngineCore::forward, py::arg("tokens"), py::arg("threads") = 0)
      .def("forward_ids", &EngineCore::forward_ids, py::arg("tokens"), py::arg("bos"), py::arg("threads") = 0)
      .def("forward_record", &EngineCore::forward_record, py::arg("tokens"), py::arg("hooks"),
           py::arg("threads") = 0, py::arg("per_sequence") = false)
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
