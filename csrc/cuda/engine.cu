// CUDA backend: one fused kernel runs whole sequences. Each thread block takes (patch set, sequence)
// items in a grid-stride loop and keeps the residual stream and every intermediate of one sequence
// in shared memory (or, for models too large for it, in a per-block global workspace: the code is
// the same, only the scratch pointer differs). Weights stay in global memory, read through the
// read-only cache; each matrix carries the list of its nonzero rows and holds only those rows (dense), or
// only its non-zero entries (CSR, for large matrices mostly zero even within those rows: sparse_form), so
// memory and work follow the non-zeros. Semantics follow engine/cpu_forward.cpp exactly.
// Two ways to map items to threads (DeviceState::launch picks per launch; RASP_CUDA_KERNEL=old|new|auto):
// block mode, the whole block on one item (lowest latency: small batches), and warp mode, one warp per
// item and threads/32 items per block with warp-level barriers only, register-tiled matmuls and a
// register-capped kernel for more resident warps (throughput: large batches and sweeps); warp mode also skips
// weight rows whose inputs are zero at every position (RASP_CUDA_XSKIP=0|1|2). See the GPU section of
// benchmarks/RESULTS.md for why.

#include "cuda/device_types.cuh"
#include "cuda/kernel.cuh"

namespace rasp::cuda {

namespace {

// ------------------------------------------------------------------------------------------ host helpers

// A grow-only device buffer.
struct DevBuf {
  void* ptr = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (ptr) cudaFree(ptr);
  }
  void* ensure(size_t n) {
    if (n == 0) n = 16;
    if (n > bytes) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      bytes = 0;
      RASP_CUDA_CHECK(cudaMalloc(&ptr, n));
      bytes = n;
    }
    return ptr;
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
  template <class T>
  T* upload(const std::vector<T>& v) {
    ensure(v.size() * sizeof(T));
    if (!v.empty()) RASP_CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return as<T>();
  }
  template <class T>
  T* upload(const T* src, size_t n) {
    ensure(n * sizeof(T));
    if (n) RASP_CUDA_CHECK(cudaMemcpy(ptr, src, n * sizeof(T), cudaMemcpyHostToDevice));
    return as<T>();
  }
};

// Row blocks stacked into one matrix (CSR only): parts[p]'s row r is row p * parts[p].rows + r (every part
// has the same shape).
SparseMat stack_rows(const std::vector<SparseMat>& parts) {
  SparseMat m;
  m.use_dense = false;
  m.cols = parts.empty() ? 0 : parts[0].cols;
  m.row_ptr.assign(1, 0);
  for (const SparseMat& p : parts) {
    for (int32_t r : p.nz_rows) m.nz_rows.push_back(m.rows + r);
    for (int i = 0; i < p.rows; ++i) m.row_ptr.push_back(m.row_ptr.back() + p.row_ptr[i + 1] - p.row_ptr[i]);
    m.col.insert(m.col.end(), p.col.begin(), p.col.end());
    m.val.insert(m.val.end(), p.val.begin(), p.val.end());
    m.rows += p.rows;
    m.nnz += p.nnz;
  }
  return m;
}

// CSR where dense rows would cost far more than their entries: matrices under 1 in 16 non-zero within their
// non-zero rows and with at least 2^16 entries in those rows (large compiled models: sort at vocab 50 x
// length 50 has 3.1M non-zeros in 122M weights), and empty ones. Small matrices keep the dense rows whose
// register-tiled loop was tuned on an H200. mode 0 or 1 (RASP_CUDA_SPARSE) forces dense rows or CSR.
bool sparse_form(const SparseMat& m, int mode) {
  if (mode >= 0) return mode == 1;
  const int64_t dense = static_cast<int64_t>(m.nz_rows.size()) * m.cols;
  return dense == 0 || (static_cast<int64_t>(m.val.size()) * 16 <= dense && dense >= (int64_t{1} << 16));
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int dev) {
    RASP_CUDA_CHECK(cudaGetDevice(&old_));
    if (old_ != dev) RASP_CUDA_CHECK(cudaSetDevice(dev));
  }
  ~DeviceGuard() { cudaSetDevice(old_); }

 private:
  int old_ = 0;
};

}  // namespace

// ------------------------------------------------------------------------------------------ engine state

struct DeviceState {
  std::mutex mu;
  int device = 0;
  int threads = 128;
  int sm_count = 1;
  size_t smem_optin = 48 * 1024;
  ModelDims dims;
  DevBuf weights, ints, layers;
  ModelDev mdev{};
  // workspaces reused across calls
  DevBuf tokens, source, out, scratch, err, rec_ptrs, slot_mem;
  DevBuf clean_w, clean_pre, clean_out, src_w, src_pre, src_out;
  DevBuf p_start, p_node, p_slot, p_eoff, p_edges, p_headper, p_diag, p_mat, p_sum, p_count, p_outs;
  std::vector<std::unique_ptr<DevBuf>> rec_bufs;
  static constexpr int kVariants = 3;  // engine_kernel<1>, <2>, <4>
  size_t smem_attr[kVariants] = {48 * 1024, 48 * 1024, 48 * 1024};  // dynamic shared memory limits as raised
  int occ_threads[kVariants] = {0, 0, 0}, occ_blocks[kVariants] = {0, 0, 0};
  size_t occ_smem[kVariants] = {0, 0, 0};
  int warp_min_blocks = 2;  // RASP_CUDA_MINBLOCKS: the register cap of the warp-mode kernel (1, 2 or 4)

  int kernel_mode = 0;  // RASP_CUDA_KERNEL: 0 auto, 1 block ("old"), 2 warp ("new")
  bool threads_set = false;  // set_block_threads was called: warp mode uses `threads` too
  int xskip = 1;  // RASP_CUDA_XSKIP: warp-mode matmuls skip all-zero input rows: 0 no, 1 residual inputs, 2 all
  int sparse_mode = -1;  // RASP_CUDA_SPARSE: -1 auto (per matrix, see sparse_form), 0 dense rows, 1 CSR
  int csr_matrices = 0;  // how many were uploaded as CSR

  // Threads per block in warp mode: the set size, else 256 (8 warps: measured a little faster than 128 on
  // an H200, run 2), halved back to 128 where 8 groups' scratch would not fit in shared memory.
  int warp_threads(size_t group_bytes) const {
    if (threads_set) return threads;
    int t = 256;
    while (t > 128 && static_cast<size_t>(t / 32) * group_bytes > smem_optin) t /= 2;
    return t;
  }

  // Warp mode (a warp per item, threads/32 items per block) pays off once there are enough items to fill
  // the GPU with warps; below that block mode spreads one sequence over the whole block, which has lower
  // latency. Warp mode needs each group's scratch in shared memory.
  bool use_warp_mode(int64_t n_items, size_t group_bytes, int wthreads) const {
    if (kernel_mode == 1) return false;
    const int groups = std::max(wthreads / 32, 1);
    if (group_bytes * groups > smem_optin) return false;
    if (kernel_mode == 2) return true;
    return n_items >= static_cast<int64_t>(16) * sm_count;
  }

  // Launch settings for a run: grid size and where the scratch lives.
  void launch(Params& prm, int64_t n_items, bool full, cudaStream_t stream) {
    auto layout = [&](int xs) {
      return make_layout(prm.T, dims.d_model, dims.n_heads, dims.d_head, dims.d_mlp, dims.d_vocab_out, full, xs);
    };
    // Row skipping needs a little more scratch per group; where that would cost warp mode, go without it.
    int xs = xskip;
    Layout lay = layout(xs);
    int wthreads = warp_threads(lay.total * sizeof(float));
    bool warp = use_warp_mode(n_items, lay.total * sizeof(float), wthreads);
    if (xs && !warp) {
      xs = 0;
      lay = layout(0);
      wthreads = warp_threads(lay.total * sizeof(float));
      warp = use_warp_mode(n_items, lay.total * sizeof(float), wthreads);
    }
    prm.scratch_floats = lay.total;  // a multiple of 4 floats: every group's scratch stays 16-byte aligned
    const size_t group_bytes = lay.total * sizeof(float);
#ifdef RASP_CUDA_EMULATE_HOST
    // the emulation runs RASP_EMU_THREADS threads per block: in warp mode each is a group of one
    const int groups = warp ? std::min(RASP_EMU_THREADS, kMaxGroups) : 1;
    const int block = warp ? groups : threads;
    (void)wthreads;
#else
    const int groups = warp ? std::max(wthreads / 32, 1) : 1;
    const int block = warp ? wthreads : threads;
#endif
    prm.groups = groups;
    prm.warp = warp ? 1 : 0;
    prm.xskip = warp ? xs : 0;
    const size_t bytes = group_bytes * groups;
    // block mode keeps the original uncapped kernel; warp mode takes the register-capped one
    const int var = !warp ? 0 : warp_min_blocks >= 4 ? 2 : warp_min_blocks >= 2 ? 1 : 0;
    void (*kernel)(Params) = var == 0 ? engine_kernel<1> : var == 1 ? engine_kernel<2> : engine_kernel<4>;
    size_t smem = bytes;
    if (bytes > smem_optin) {
      smem = 0;
    } else if (bytes > 48 * 1024 && bytes > smem_attr[var]) {
      RASP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
      smem_attr[var] = bytes;
    }
    int per_sm = 0;
    if (occ_threads[var] == block && occ_smem[var] == smem) {  // the occupancy query costs microseconds
      per_sm = occ_blocks[var];
    } else {
      RASP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block, smem));
      per_sm = std::max(per_sm, 1);
      occ_threads[var] = block;
      occ_smem[var] = smem;
      occ_blocks[var] = per_sm;
    }
    const int64_t blocks_needed = (n_items + groups - 1) / groups;
    int64_t grid = std::min<int64_t>(blocks_needed, static_cast<int64_t>(sm_count) * per_sm);
    grid = std::max<int64_t>(grid, 1);
    const int64_t n_grps = grid * groups;
    if (smem == 0) {
      prm.gscratch = static_cast<float*>(scratch.ensure(static_cast<size_t>(n_grps) * group_bytes));
    } else {
      prm.gscratch = nullptr;
    }
    if (prm.plan.S > 0) {
      prm.plan.slot_mem = static_cast<float*>(
          slot_mem.ensure(static_cast<size_t>(n_grps) * std::max(prm.plan.n_slots, 1) * prm.T * dims.d_model *
                          sizeof(float)));
    }
    prm.err = err.as<int>();
    RASP_CUDA_CHECK(cudaMemsetAsync(prm.err, 0, sizeof(int), stream));
    RASP_LAUNCH(kernel, static_cast<unsigned>(grid), block, smem, stream, prm);
    RASP_CUDA_CHECK(cudaGetLastError());
  }

  void check_err(cudaStream_t stream) {
    int flag = 0;
    RASP_CUDA_CHECK(cudaMemcpyAsync(&flag, err.ptr, sizeof(int), cudaMemcpyDeviceToHost, stream));
    RASP_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (flag) throw std::invalid_argument("tokens: a token id is outside [0, d_vocab=" +
                                          std::to_string(dims.d_vocab) + ")");
  }

  Params base_params(const int32_t* d_tokens, int B, int T) const {
    Params prm{};
    prm.m = mdev;
    prm.tokens = d_tokens;
    prm.B = B;
    prm.T = T;
    return prm;
  }

  // A cached clean run of d_tokens on the device: writer outputs, residuals before each layer, outputs.
  void cached_run(const int32_t* d_tokens, int B, int T, DevBuf& w, DevBuf& pre, DevBuf& out) {
    const size_t TD = static_cast<size_t>(T) * dims.d_model;
    Params prm = base_params(d_tokens, B, T);
    prm.cache.writer = static_cast<float*>(w.ensure(static_cast<size_t>(B) * dims.n_writers() * TD * 4));
    prm.cache.pre = static_cast<float*>(pre.ensure(static_cast<size_t>(B) * (dims.n_layers + 1) * TD * 4));
    prm.cache.out = static_cast<float*>(out.ensure(static_cast<size_t>(B) * T * dims.d_vocab_out * 4));
    launch(prm, B, false, nullptr);
  }
};

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_name() {
  if (device_count() == 0) return {};
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return {};
  return prop.name;
}

bool smoke_test() {
  if (device_count() == 0) return false;
  const int n = 1000;
  std::vector<float> ha(n), hb(n), hc(n, 0.0f);
  for (int i = 0; i < n; ++i) {
    ha[i] = static_cast<float>(i);
    hb[i] = 2.0f * static_cast<float>(i);
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  bool ok = cudaMalloc(&da, n * sizeof(float)) == cudaSuccess && cudaMalloc(&db, n * sizeof(float)) == cudaSuccess &&
            cudaMalloc(&dc, n * sizeof(float)) == cudaSuccess;
  if (ok) {
    cudaMemcpy(da, ha.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    RASP_LAUNCH(add_kernel, (n + 255) / 256, 256, 0, nullptr, da, db, dc, n);
    ok = cudaMemcpy(hc.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  if (!ok) return false;
  for (int i = 0; i < n; ++i)
    if (hc[i] != 3.0f * static_cast<float>(i)) return false;
  return true;
}

// ------------------------------------------------------------------------------------------ CudaEngine

CudaEngine::CudaEngine(const Model& m, int device) : st_(std::make_unique<DeviceState>()) {
  if (device < 0 || device >= device_count())
    throw std::invalid_argument("CudaEngine: CUDA device " + std::to_string(device) + " is not available (" +
                                std::to_string(device_count()) + " visible)");
  DeviceState& st = *st_;
  st.device = device;
  DeviceGuard guard(device);
  cudaDeviceProp prop{};
  RASP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  st.sm_count = prop.multiProcessorCount;
  // leave room for the kernel's static shared memory and the runtime's reserve
  st.smem_optin = prop.sharedMemPerBlockOptin > 2048 ? prop.sharedMemPerBlockOptin - 2048 : 0;
  if (const char* km = std::getenv("RASP_CUDA_KERNEL")) {
    const std::string v(km);
    if (v == "old" || v == "block") st.kernel_mode = 1;
    else if (v == "new" || v == "warp") st.kernel_mode = 2;
    else if (!v.empty() && v != "auto")
      throw std::invalid_argument("RASP_CUDA_KERNEL must be auto, old (block) or new (warp), not '" + v + "'");
  }
  if (const char* mb = std::getenv("RASP_CUDA_MINBLOCKS")) {
    const std::string v(mb);
    if (v == "1" || v == "2" || v == "4") st.warp_min_blocks = v[0] - '0';
    else if (!v.empty()) throw std::invalid_argument("RASP_CUDA_MINBLOCKS must be 1, 2 or 4, not '" + v + "'");
  }
  if (const char* xs = std::getenv("RASP_CUDA_XSKIP")) {
    const std::string v(xs);
    if (v == "0" || v == "1" || v == "2") st.xskip = v[0] - '0';
    else if (!v.empty()) throw std::invalid_argument("RASP_CUDA_XSKIP must be 0, 1 or 2, not '" + v + "'");
  }
  if (const char* sp = std::getenv("RASP_CUDA_SPARSE")) {
    const std::string v(sp);
    if (v == "0" || v == "1") st.sparse_mode = v[0] - '0';
    else if (!v.empty() && v != "auto")
      throw std::invalid_argument("RASP_CUDA_SPARSE must be auto, 0 (dense rows) or 1 (CSR), not '" + v + "'");
  }
  st.dims = m.dims;
  const ModelDims& d = m.dims;
  const int D = d.d_model, H = d.n_heads, E = d.d_head, L = d.n_layers;

  // Pack every float array into one buffer and every row list into another; remember offsets.
  std::vector<float> f;
  std::vector<int> ints;
  auto put_f = [&](const float* src, size_t n) {
    const size_t off = f.size();
    f.insert(f.end(), src, src + n);
    while (f.size() % 4) f.push_back(0.0f);  // 16-byte alignment of every array
    return off;
  };
  auto put_i = [&](const std::vector<int32_t>& v) {
    const size_t off = ints.size();
    ints.insert(ints.end(), v.begin(), v.end());
    return off;
  };
  // Each matrix: its row list, and its dense rows or its CSR arrays.
  struct MatOff {
    bool sparse;
    int ld, n_rows;
    size_t w, rows, ptr, col, val;
  };
  auto put_mat = [&](const SparseMat& mat) {
    MatOff o{};
    o.sparse = sparse_form(mat, st.sparse_mode);
    st.csr_matrices += o.sparse ? 1 : 0;
    o.ld = mat.cols;
    o.n_rows = static_cast<int>(mat.nz_rows.size());
    o.rows = put_i(mat.nz_rows);
    if (o.sparse) {
      o.ptr = put_i(mat.row_ptr);
      o.col = put_i(mat.col);
      o.val = put_f(mat.val.data(), mat.val.size());
    } else {
      const std::vector<float> dense = mat.dense_rows();
      o.w = put_f(dense.data(), dense.size());
    }
    return o;
  };
  struct LayerOff {
    MatOff qkv, wo, win, wout;
    size_t bqkv, bo, bin, bout, head_off, active, qk_cols, qk_off, v_live;
    int any;
  };
  const size_t o_we = put_f(m.w_e.data(), m.w_e.size());
  const size_t o_wpos = put_f(m.w_pos.data(), m.w_pos.size());
  const MatOff o_u = put_mat(m.w_u);
  const size_t o_bu = put_f(m.b_u.data(), m.b_u.size());
  std::vector<LayerOff> lo(L);
  for (int l = 0; l < L; ++l) {
    const LayerWeights& W = m.layers[l];
    LayerOff& o = lo[l];
    o.qkv = put_mat(W.qkv);
    o.bqkv = put_f(W.bqkv.data(), W.bqkv.size());
    o.wo = put_mat(stack_rows(W.wo));  // W_O of all heads stacked: [H*E, D]
    std::vector<int32_t> head_off{0};  // head h's rows are entries [head_off[h], head_off[h + 1]) of the list
    std::vector<int32_t> active;
    int any = 0;
    for (int h = 0; h < H; ++h) {
      head_off.push_back(head_off.back() + static_cast<int32_t>(W.wo[h].nz_rows.size()));
      active.push_back(W.head_active[h]);
      any |= W.head_active[h];
    }
    o.bo = put_f(W.b_o.data(), W.b_o.size());
    o.win = put_mat(W.w_in);
    o.bin = put_f(W.b_in.data(), W.b_in.size());
    o.wout = put_mat(W.w_out);
    o.bout = put_f(W.b_out.data(), W.b_out.size());
    o.head_off = put_i(head_off);
    // Per head (model.h's HeadColumns): the d_head columns scores sum over, and where z can be non-zero.
    std::vector<int32_t> qk_cols, qk_off{0};
    std::vector<int32_t> v_live((static_cast<size_t>(H) * E + 3) / 4 + 1, 0);
    for (int h = 0; h < H; ++h) {
      qk_cols.insert(qk_cols.end(), W.cols[h].qk.begin(), W.cols[h].qk.end());
      qk_off.push_back(static_cast<int32_t>(qk_cols.size()));
      for (int32_t e : W.cols[h].v) {
        const size_t i = static_cast<size_t>(h) * E + e;
        v_live[i / 4] |= 1 << (8 * (i % 4));
      }
    }
    o.qk_cols = put_i(qk_cols);
    o.qk_off = put_i(qk_off);
    o.v_live = put_i(v_live);
    // active flags as bytes packed into ints (one int per head keeps indexing simple: read as bytes)
    std::vector<int32_t> packed((H + 3) / 4 + 1, 0);
    for (int h = 0; h < H; ++h) packed[h / 4] |= (active[h] ? 1 : 0) << (8 * (h % 4));
    o.active = put_i(packed);
    o.any = any;
  }
  const float* fw = st.weights.upload(f);
  const int* iw = st.ints.upload(ints);
  auto mat_dev = [&](const MatOff& o) {
    return o.sparse ? MatDev{nullptr, o.ld, iw + o.rows, o.n_rows, iw + o.ptr, iw + o.col, fw + o.val}
                    : MatDev{fw + o.w, o.ld, iw + o.rows, o.n_rows, nullptr, nullptr, nullptr};
  };
  std::vector<LayerDev> ld(L);
  for (int l = 0; l < L; ++l) {
    const LayerOff& o = lo[l];
    LayerDev& x = ld[l];
    x.qkv = mat_dev(o.qkv);
    x.wo = mat_dev(o.wo);
    x.win = mat_dev(o.win);
    x.wout = mat_dev(o.wout);
    x.bqkv = fw + o.bqkv;
    x.bo = fw + o.bo;
    x.bin = fw + o.bin;
    x.bout = fw + o.bout;
    x.wo_head_off = iw + o.head_off;
    x.active = reinterpret_cast<const unsigned char*>(iw + o.active);
    x.qk_cols = iw + o.qk_cols;
    x.qk_off = iw + o.qk_off;
    x.v_live = reinterpret_cast<const unsigned char*>(iw + o.v_live);
    x.any_active = o.any;
  }
  ModelDev& md = st.mdev;
  md.L = L;
  md.D = D;
  md.H = H;
  md.E = E;
  md.M = d.d_mlp;
  md.V = d.d_vocab_out;
  md.Vin = d.d_vocab;
  md.n_ctx = d.n_ctx;
  md.pad = d.pad_token_id;
  md.causal = d.causal ? 1 : 0;
  md.w_e = fw + o_we;
  md.w_pos = fw + o_wpos;
  md.u = mat_dev(o_u);
  md.b_u = fw + o_bu;
  md.layers = st.layers.upload(ld);
  st.err.ensure(sizeof(int));
}

CudaEngine::~CudaEngine() {
  if (st_) {
    cudaSetDevice(st_->device);
    st_.reset();
  }
}

void CudaEngine::set_block_threads(int n) {
  if (n < 32 || n > kMaxThreads || n % 32 != 0)
    throw std::invalid_argument("CudaEngine: threads per block must be a multiple of 32 in [32, " +
                                std::to_string(kMaxThreads) + "], got " +
                                std::to_string(n));
  st_->threads = n;
  st_->threads_set = true;
}
int CudaEngine::block_threads() const { return st_->threads; }
int CudaEngine::device() const { return st_->device; }
size_t CudaEngine::weight_bytes() const { return st_->weights.bytes + st_->ints.bytes + st_->layers.bytes; }
int CudaEngine::csr_matrices() const { return st_->csr_matrices; }
std::string CudaEngine::device_name() const {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, st_->device) != cudaSuccess) return {};
  return prop.name;
}

void CudaEngine::forward_device(const int32_t* d_tokens, int B, int T, float* d_out, uintptr_t stream) {
  if (B <= 0 || T <= 0) return;
  if (T > st_->dims.n_ctx) throw std::invalid_argument("tokens: sequence length exceeds n_ctx");
  std::lock_guard<std::mutex> lock(st_->mu);
  DeviceGuard guard(st_->device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  Params prm = st_->base_params(d_tokens, B, T);
  prm.out = d_out;
  st_->launch(prm, B, false, s);
  st_->check_err(s);
}

void CudaEngine::forward_host(const int32_t* tokens, int B, int T, float* out, const Record* rec) {
  if (B <= 0 || T <= 0) return;
  std::lock_guard<std::mutex> lock(st_->mu);
  DeviceState& st = *st_;
  DeviceGuard guard(st.device);
  const ModelDims& d = st.dims;
  const int32_t* dt = st.tokens.upload(tokens, static_cast<size_t>(B) * T);
  const size_t n_out = static_cast<size_t>(B) * T * d.d_vocab_out;
  Params prm = st.base_params(dt, B, T);
  prm.out = static_cast<float*>(st.out.ensure(n_out * sizeof(float)));
  // device buffers for the requested activations
  std::vector<std::pair<float*, float*>> copies;  // (device, host)
  std::vector<size_t> sizes;
  size_t n_buf = 0;
  const size_t TD = static_cast<size_t>(B) * T * d.d_model, THE = static_cast<size_t>(B) * T * d.n_heads * d.d_head,
               HTT = static_cast<size_t>(B) * d.n_heads * T * T, THD = static_cast<size_t>(B) * T * d.n_heads * d.d_model,
               TM = static_cast<size_t>(B) * T * d.d_mlp;
  auto dev_for = [&](float* host, size_t n) -> float* {
    if (!host) return nullptr;
    if (st.rec_bufs.size() <= n_buf) st.rec_bufs.push_back(std::make_unique<DevBuf>());
    float* dptr = static_cast<float*>(st.rec_bufs[n_buf++]->ensure(n * sizeof(float)));
    copies.emplace_back(dptr, host);
    sizes.push_back(n);
    return dptr;
  };
  std::vector<float*> layer_ptrs;
  if (rec) {
    prm.rec.embed = dev_for(rec->embed, TD);
    prm.rec.pos_embed = dev_for(rec->pos_embed, TD);
    if (!rec->layers.empty()) {
      layer_ptrs.assign(static_cast<size_t>(d.n_layers) * kRecordKinds, nullptr);
      for (int l = 0; l < d.n_layers; ++l) {
        const LayerRecord& r = rec->layers[l];
        float** o = layer_ptrs.data() + static_cast<size_t>(l) * kRecordKinds;
        o[kRecResidPre] = dev_for(r.resid_pre, TD);
        o[kRecQ] = dev_for(r.q, THE);
        o[kRecK] = dev_for(r.k, THE);
        o[kRecV] = dev_for(r.v, THE);
        o[kRecZ] = dev_for(r.z, THE);
        o[kRecScores] = dev_for(r.scores, HTT);
        o[kRecPattern] = dev_for(r.pattern, HTT);
        o[kRecResult] = dev_for(r.result, THD);
        o[kRecAttnOut] = dev_for(r.attn_out, TD);
        o[kRecResidMid] = dev_for(r.resid_mid, TD);
        o[kRecMlpPre] = dev_for(r.mlp_pre, TM);
        o[kRecMlpPost] = dev_for(r.mlp_post, TM);
        o[kRecMlpOut] = dev_for(r.mlp_out, TD);
        o[kRecResidPost] = dev_for(r.resid_post, TD);
      }
      prm.rec.layer = st.rec_ptrs.upload(layer_ptrs);
    }
  }
  st.launch(prm, B, false, nullptr);
  st.check_err(nullptr);
  RASP_CUDA_CHECK(cudaMemcpy(out, prm.out, n_out * sizeof(float), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < copies.size(); ++i)
    if (sizes[i]) RASP_CUDA_CHECK(cudaMemcpy(copies[i].second, copies[i].first, sizes[i] * sizeof(float),
                                             cudaMemcpyDeviceToHost));
}

void CudaEngine::sweep_host(const int32_t* tokens, const int32_t* source_tokens, int B, int T, int n_override,
                            const int32_t* override_ids, const float* override_values,
                            const std::vector<PatchPlan>& plans, const Projections& proj, Metric metric, float atol,
                            float* metric_sum, float* metric_count, float* outs) {
  const int S = static_cast<int>(plans.size());
  if (S == 0 || B <= 0 || T <= 0) return;
  std::lock_guard<std::mutex> lock(st_->mu);
  DeviceState& st = *st_;
  DeviceGuard guard(st.device);
  const ModelDims& d = st.dims;
  const int NW = d.n_writers(), NR = d.n_readers(), L = d.n_layers, H = d.n_heads;
  const size_t n = static_cast<size_t>(S) * B;
  // clean and source runs, once
  const int32_t* dt = st.tokens.upload(tokens, static_cast<size_t>(B) * T);
  st.cached_run(dt, B, T, st.clean_w, st.clean_pre, st.clean_out);
  st.check_err(nullptr);
  const size_t TD = static_cast<size_t>(T) * d.d_model;
  if (source_tokens) {
    const int32_t* ds = st.source.upload(source_tokens, static_cast<size_t>(B) * T);
    st.cached_run(ds, B, T, st.src_w, st.src_pre, st.src_out);
    st.check_err(nullptr);
  } else {  // no source run: every patched writer has an override; the rest reads as zeros
    const size_t nw = static_cast<size_t>(B) * NW * TD, no = static_cast<size_t>(B) * T * d.d_vocab_out;
    RASP_CUDA_CHECK(cudaMemset(st.src_w.ensure(nw * sizeof(float)), 0, nw * sizeof(float)));
    RASP_CUDA_CHECK(cudaMemset(st.src_out.ensure(no * sizeof(float)), 0, no * sizeof(float)));
  }
  for (int k = 0; k < n_override; ++k)  // [B, T, D] into writer override_ids[k]'s slot of every item
    RASP_CUDA_CHECK(cudaMemcpy2D(st.src_w.as<float>() + static_cast<size_t>(override_ids[k]) * TD,
                                 NW * TD * sizeof(float), override_values + static_cast<size_t>(k) * B * TD,
                                 TD * sizeof(float), TD * sizeof(float), B, cudaMemcpyHostToDevice));
  // flatten the plans
  std::vector<int32_t> start(S), node(static_cast<size_t>(S) * NW), slot(static_cast<size_t>(S) * NW, -1),
      eoff(static_cast<size_t>(S) * NR * 4 + 1, 0);
  std::vector<int2> edges;
  std::vector<unsigned char> head_per(static_cast<size_t>(S) * std::max(L, 1), 0);
  int n_slots = 0;
  for (int s = 0; s < S; ++s) {
    const PatchPlan& pl = plans[s];
    start[s] = pl.start_layer;
    int next_slot = 0;
    for (int w = 0; w < NW; ++w) node[static_cast<size_t>(s) * NW + w] = pl.node_proj[w];
    for (int r = 0; r < NR; ++r)
      for (int in = 0; in < kNumInputs; ++in) {
        eoff[(static_cast<size_t>(s) * NR + r) * 4 + in] = static_cast<int32_t>(edges.size());
        for (const auto& [w, pj] : pl.edges_into(r, in)) {
          edges.push_back(make_int2(w, pj));
          int32_t& sl = slot[static_cast<size_t>(s) * NW + w];
          if (sl < 0) sl = next_slot++;
        }
      }
    n_slots = std::max(n_slots, next_slot);
    for (int w = 2; w < NW; ++w) {
      const int l = d.writer_layer(w);
      if (d.writer_is_mlp(w)) continue;
      if (pl.node_proj[w] != kNoPatch || slot[static_cast<size_t>(s) * NW + w] >= 0)
        head_per[static_cast<size_t>(s) * L + l] = 1;
    }
  }
  eoff.back() = static_cast<int32_t>(edges.size());
  // (eoff[(s*NR + r)*4 + in + 1] of the last input of a plan is the next plan's first offset: the same
  // value, since the edges are appended in that order.)
  Params prm = st.base_params(dt, B, T);
  PlanDev& pd = prm.plan;
  pd.S = S;
  pd.start = st.p_start.upload(start);
  pd.node_proj = st.p_node.upload(node);
  pd.slot = st.p_slot.upload(slot);
  pd.edge_off = st.p_eoff.upload(eoff);
  pd.edges = st.p_edges.upload(edges);
  pd.head_per = st.p_headper.upload(head_per);
  pd.n_slots = n_slots;
  pd.n_diag = proj.n_diag;
  pd.diag = st.p_diag.upload(proj.diag, static_cast<size_t>(proj.n_diag) * d.d_model);
  pd.mat = st.p_mat.upload(proj.mat, static_cast<size_t>(proj.n_mat) * d.d_model * d.d_model);
  pd.clean_w = st.clean_w.as<float>();
  pd.clean_pre = st.clean_pre.as<float>();
  pd.clean_out = st.clean_out.as<float>();
  pd.src_w = st.src_w.as<float>();
  pd.src_out = st.src_out.as<float>();
  pd.metric = static_cast<int>(metric);
  pd.atol = atol;
  pd.msum = static_cast<float*>(st.p_sum.ensure(n * sizeof(float)));
  pd.mcount = static_cast<float*>(st.p_count.ensure(n * sizeof(float)));
  const size_t TV = static_cast<size_t>(T) * d.d_vocab_out;
  pd.outs = outs ? static_cast<float*>(st.p_outs.ensure(n * TV * sizeof(float))) : nullptr;
  if (metric == Metric::kNone) {
    RASP_CUDA_CHECK(cudaMemset(pd.msum, 0, n * sizeof(float)));
    RASP_CUDA_CHECK(cudaMemset(pd.mcount, 0, n * sizeof(float)));
  }
  st.launch(prm, static_cast<int64_t>(n), true, nullptr);
  st.check_err(nullptr);
  RASP_CUDA_CHECK(cudaMemcpy(metric_sum, pd.msum, n * sizeof(float), cudaMemcpyDeviceToHost));
  RASP_CUDA_CHECK(cudaMemcpy(metric_count, pd.mcount, n * sizeof(float), cudaMemcpyDeviceToHost));
  if (outs) RASP_CUDA_CHECK(cudaMemcpy(outs, pd.outs, n * TV * sizeof(float), cudaMemcpyDeviceToHost));
  (void)H;
}

}  // namespace rasp::cuda
