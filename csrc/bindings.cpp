// Python bindings of the compiled kernels: `cagul_kernels._C`.
// CPU kernels take ATen tensors directly (csrc/cpu). CUDA kernels (csrc/cuda) are raw-pointer
// launchers without torch headers; the glue below turns tensors into pointers and strides.
#include <torch/extension.h>

#include "cpu/kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cagul_kernels compiled kernels (CPU; CUDA when built with nvcc)";
#ifdef CAGUL_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("cross_modal_importance_cpu", &cagul::cpu::cross_modal_importance,
        "Cross-modal attention importance (CPU)", py::arg("q"), py::arg("k"), py::arg("lse"),
        py::arg("query_index"), py::arg("visual_index"), py::arg("scale"), py::arg("causal"),
        py::arg("mean"), py::arg("per_head"));
}
