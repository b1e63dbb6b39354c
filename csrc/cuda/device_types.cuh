// Device-side types of the CUDA engine: launch constants, the model / plan / record views the kernel
// reads (plain structs of device pointers and sizes), and the per-launch parameters. Included by
// engine.cu only (one translation unit), hence the anonymous namespace.
#pragma once

#ifdef RASP_CUDA_EMULATE_HOST
#include "cuda/emulate/cuda_runtime.h"  // CPU emulation for logic tests (scripts/cuda_emulate_check.sh)
#define RASP_LAUNCH(kernel, grid, block, smem, stream, ...) rasp_emu_launch(kernel, grid, block, smem, __VA_ARGS__)
#define RASP_UNROLL
#else
#define RASP_UNROLL _Pragma("unroll")
#include <cuda_runtime.h>
#define RASP_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cuda_api.h"


namespace rasp::cuda {
namespace {


#define RASP_CUDA_CHECK(expr)                                                                            \
  do {                                                                                                   \
    cudaError_t err_ = (expr);                                                                           \
    if (err_ != cudaSuccess)                                                                             \
      throw std::runtime_error(std::string("CUDA error in ") + #expr + ": " + cudaGetErrorString(err_)); \
  } while (0)

constexpr int kMaxThreads = 256;  // the kernel's launch bound (more registers than a 1024 bound)
#ifdef RASP_CUDA_EMULATE_HOST
constexpr int kMaxGroups = 64;  // the emulation's warp groups are single threads
#else
constexpr int kMaxGroups = kMaxThreads / 32;  // thread groups per block: warps at most
#endif
constexpr int kRecordKinds = 14;  // per-layer record pointers, in LayerRecord's order
enum RecKind {
  kRecResidPre, kRecQ, kRecK, kRecV, kRecZ, kRecScores, kRecPattern, kRecResult, kRecAttnOut, kRecResidMid,
  kRecMlpPre, kRecMlpPost, kRecMlpOut, kRecResidPost
};

// ------------------------------------------------------------------------------------------ device data

// A weight matrix as the kernel reads it: the list of its non-zero rows, and either those rows dense (w:
// row rows[r] at w + r * ld) or, for a matrix mostly zero even within them, its CSR form only (w null).
// Device memory follows the non-zeros either way (engine.cu's sparse_form decides; RASP_CUDA_SPARSE=0|1
// forces one form).
struct MatDev {
  const float* w;
  int ld;
  const int* rows;  // rows with a non-zero, increasing; null: every row in [0, n_rows)
  int n_rows;
  const int *ptr, *col;  // CSR (sparse only): row i's entries are [ptr[i], ptr[i+1]), columns increasing
  const float* val;
};

struct LayerDev {
  MatDev qkv, wo, win, wout;  // qkv [D, 3HE], wo [HE, D] (all heads stacked), win [D, M], wout [M, D]
  const float *bqkv, *bo, *bin, *bout;
  const int* wo_head_off;   // [H + 1]: head h's rows of W_O are wo.rows[wo_head_off[h] .. wo_head_off[h + 1])
  const unsigned char* active;  // per head: W_O[h] has a nonzero
  int any_active;
  const int* qk_cols;            // per head: d_head columns where q and k can both be non-zero, concatenated
  const int* qk_off;             // [H + 1]
  const unsigned char* v_live;   // [H * E]: v's column can be non-zero (else z is exactly zero there)
};

struct ModelDev {
  int L, D, H, E, M, V, Vin, n_ctx, pad, causal;
  const float *w_e, *w_pos, *b_u;
  MatDev u;                // W_U [D, V]
  const LayerDev* layers;  // [L] in device memory
};

struct RecordDev {  // device pointers, null = not recorded
  float *embed, *pos_embed;
  float* const* layer;  // [L * kRecordKinds] or null
};

struct CacheDev {  // outputs of a cached run (null = not wanted)
  float *writer, *pre, *out;  // [B][NW][T][D], [B][L+1][T][D], [B][T][V]
};

struct PlanDev {
  int S = 0;                              // 0: unpatched run
  const int* start = nullptr;             // [S]
  const int* node_proj = nullptr;         // [S * NW]
  const int* slot = nullptr;              // [S * NW]: -1 or the writer's slot (edge sources)
  const int* edge_off = nullptr;          // [S * NR * 4 + 1]
  const int2* edges = nullptr;            // (writer, projection)
  const unsigned char* head_per = nullptr;  // [S * L]: the layer needs per-head results
  int n_slots = 0;
  float* slot_mem = nullptr;              // [groups in the grid][n_slots][T][D]
  const float* diag = nullptr;
  const float* mat = nullptr;
  int n_diag = 0;
  const float *clean_w = nullptr, *clean_pre = nullptr, *clean_out = nullptr, *src_w = nullptr,
              *src_out = nullptr;
  int metric = 0;
  float atol = 0.0f;
  float *msum = nullptr, *mcount = nullptr, *outs = nullptr;
};

struct Params {
  ModelDev m;
  const int32_t* tokens;
  int B, T;
  float* out;  // [B, T, V] or null
  RecordDev rec;
  CacheDev cache;
  PlanDev plan;
  float* gscratch;  // null: shared memory
  size_t scratch_floats;  // per group
  int* err;
  int groups;  // thread groups per block, each running its own items (1: the whole block is one group)
  int warp;    // groups are single warps: they synchronise with __syncwarp, not __syncthreads
  int xskip;   // warp mode: matmuls skip all-zero input rows: 0 never, 1 residual inputs, 2 every matmul
};

// The threads that run one item together: the whole block (block mode, for few items: most threads busy on
// one sequence) or one warp of it (warp mode, for many items: no block-wide barriers, and the tiny
// per-sequence loops keep 32 lanes busy instead of leaving most of 128 idle).
struct Grp {
  int tid, n;
  bool warp;
  int* idx;  // warp mode with row skipping: the group's list of rows with a nonzero input (else null)
  bool skip_all;  // skip rows in every matmul, not only those reading the residual stream
  __device__ void sync() const {
#ifdef RASP_CUDA_EMULATE_HOST
    if (!warp) __syncthreads();  // the emulation's warp groups have one thread
#else
    if (warp) __syncwarp();
    else __syncthreads();
#endif
  }
};


}  // namespace
}  // namespace rasp::cuda
