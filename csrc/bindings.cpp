// Python bindings of the compiled kernels: `cagul_kernels._C`.
// CPU kernels take ATen tensors directly (csrc/cpu). CUDA kernels (csrc/cuda) are raw-pointer
// launchers without torch headers; the glue below turns tensors into pointers and strides.
#include <torch/extension.h>

#include "cpu/kernels.h"

#ifdef CAGUL_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launchers.h"

namespace {

// importance [B, Nv] fp32, visual_index [B, Nv] int64 (unit stride along Nv), counts [B]
// int64, all validated by cagul_kernels/ops/topk.py.
std::tuple<at::Tensor, at::Tensor> select_low_importance_cuda(const at::Tensor& importance,
                                                              const at::Tensor& visual_index,
                                                              const at::Tensor& counts,
                                                              int64_t width) {
  TORCH_CHECK(importance.is_cuda() && importance.scalar_type() == at::kFloat &&
                  importance.stride(1) == 1,
              "select_low_importance_cuda: importance must be fp32 CUDA with unit inner stride");
  TORCH_CHECK(visual_index.scalar_type() == at::kLong && visual_index.stride(1) == 1,
              "select_low_importance_cuda: visual_index must be int64 with unit inner stride");
  const c10::cuda::CUDAGuard guard(importance.device());
  const int64_t batch = importance.size(0), nv = importance.size(1);
  const auto opts = visual_index.options();
  at::Tensor slots = at::full({batch, width}, -1, opts);
  at::Tensor positions = at::full({batch, width}, -1, opts);
  at::Tensor counts64 = counts.to(opts).contiguous();
  at::Tensor words = at::empty({batch, cagul::cuda::select_row_words(nv)}, opts);
  const cudaError_t status = cagul::cuda::select_low_importance(
      importance.const_data_ptr<float>(), importance.stride(0),
      visual_index.const_data_ptr<int64_t>(), visual_index.stride(0),
      counts64.const_data_ptr<int64_t>(), batch, nv, width,
      reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>()), slots.data_ptr<int64_t>(),
      positions.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "select_low_importance_cuda: ", cudaGetErrorString(status));
  return {slots, positions};
}

}  // namespace
#endif

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
  m.def("select_low_importance_cpu", &cagul::cpu::select_low_importance,
        "Lowest-importance visual tokens per row (CPU)", py::arg("importance"),
        py::arg("visual_index"), py::arg("k"), py::arg("ratio"));
#ifdef CAGUL_WITH_CUDA
  m.def("select_low_importance_cuda", &select_low_importance_cuda,
        "Lowest-importance visual tokens per row (CUDA)", py::arg("importance"),
        py::arg("visual_index"), py::arg("counts"), py::arg("width"));
#endif
}
