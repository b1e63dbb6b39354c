// The CUDA backend as seen from host C++ (no CUDA headers needed to include this). Only compiled and
// linked when the build defines RASP_HAVE_CUDA. Semantics are the CPU engine's (engine/cpu_forward.h):
// the same forward, recorded forward, patched forward and sweep, computed by one fused kernel launch
// per call in which each thread block runs whole sequences (all layers) with its residual stream in
// shared memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/cpu_forward.h"
#include "engine/model.h"
#include "engine/patch.h"

namespace rasp::cuda {

// Number of CUDA devices the runtime sees (0 when there is no driver or no GPU; never throws).
int device_count();

// Name of device 0, or an empty string.
std::string device_name();

// Self-test of the toolchain: adds two small vectors on the GPU, returns true when the result is right.
bool smoke_test();

struct DeviceState;  // device buffers and launch settings (defined in engine.cu)

// A model's weights on one GPU plus reusable device workspaces. Calls are serialised by a mutex.
// Every method throws std::runtime_error on a CUDA error and std::invalid_argument on bad input.
class CudaEngine {
 public:
  // Uploads the model to `device`: each matrix as its dense non-zero rows, or as CSR where it is mostly zero
  // even within those rows (RASP_CUDA_SPARSE=auto|0|1), with the list of its non-zero rows.
  CudaEngine(const Model& m, int device);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // Host arrays in and out: tokens [B, T] (already validated), out [B, T, d_vocab_out]; rec may be
  // null (its non-null pointers are host arrays in TransformerLens layouts, as for forward_cpu).
  void forward_host(const int32_t* tokens, int B, int T, float* out, const Record* rec);

  // Device arrays in and out (e.g. torch CUDA tensors): nothing is copied through the host. Token
  // ids are checked on the device; an id outside [0, d_vocab) raises std::invalid_argument.
  // stream: a cudaStream_t as an integer (0 = the legacy default stream).
  void forward_device(const int32_t* d_tokens, int B, int T, float* d_out, uintptr_t stream);

  // As sweep_cpu, but computes the clean and source runs itself (on the device, once) from host
  // token arrays. source_tokens may be null (source outputs all zero); then n_override writer outputs
  // (ids override_ids [K], values [K, B, T, D]) replace the source run's. metric_sum/metric_count
  // [S*B]; outs [S*B*T*V] or null.
  void sweep_host(const int32_t* tokens, const int32_t* source_tokens, int B, int T, int n_override,
                  const int32_t* override_ids, const float* override_values, const std::vector<PatchPlan>& plans, const Projections& proj, Metric metric, float atol,
                  float* metric_sum, float* metric_count, float* outs);

  // Threads per block (default 128; 32..256, a multiple of 32).
  void set_block_threads(int n);
  int block_threads() const;
  int device() const;
  std::string device_name() const;
  size_t weight_bytes() const;  // device memory of the uploaded weights and their index arrays
  int csr_matrices() const;     // matrices uploaded as CSR

 private:
  std::unique_ptr<DeviceState> st_;
};

}  // namespace rasp::cuda
