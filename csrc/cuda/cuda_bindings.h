// Registers the CUDA backend's Python classes (CudaEngineCore) on the extension module.
#pragma once

namespace pybind11 {
class module_;
}

namespace rasp::cuda {
void register_cuda(pybind11::module_& m);
}
