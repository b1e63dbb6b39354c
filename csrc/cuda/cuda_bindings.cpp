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

#include "bindings_common.h"
#include "cuda/cuda_api.h"
#include "engine/model.h"
#include "engine/patch.h"

namespace py = pybind11;

namespace rasp::cuda {

namespace {

class CudaEngineCore {
 public:
  CudaEngineCore(const py::dict& dims, const py::list& weights, int device) : d_(bind::read_dims(dims)) {
    std::vector<py::array_t<float>> keep;  // holds references while the model is built
    const ModelWeightViews v = bind::weight_views(weights, d_, "CudaEngineCore", keep);
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
    py::array_t<float> out = bind::logits_for(tokens, d_);
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
    const py::ssize_t B = tokens.shape(0), T = tokens.shape(1);
    Record rec;
    py::list arrays = bind::record_arrays(hooks, d_, B, T, rec);
    py::array_t<float> out = bind::logits_for(tokens, d_);
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
    bind::SweepInputs in = bind::parse_sweep(d_, tokens_obj, source_obj, nodes_obj, node_off_obj, edges_obj,
                                             edge_off_obj, diag_obj, mat_obj, metric_name, return_outputs,
                                             override_ids_obj, override_obj);
    {
      py::gil_scoped_release release;
      eng_->sweep_host(in.tp, in.sp, in.B, in.T, in.K, in.ov_id, in.ov, in.plans, in.proj, in.metric, atol,
                       in.sum_p, in.cnt_p, in.outs);
    }
    (void)threads;
    return py::make_tuple(in.sums, in.counts, in.outs_obj);
  }

  py::dict stats() const {
    py::dict s = bind::model_stats(model_, d_);
    s["device"] = eng_->device_name();
    s["block_threads"] = eng_->block_threads();
    s["weight_bytes"] = eng_->weight_bytes();
    s["csr_matrices"] = eng_->csr_matrices();
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
    return bind::check_tokens(obj, what, d_);
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
