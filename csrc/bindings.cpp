// Python bindings of the compiled kernels: `cagul_kernels._C`.
// CPU kernels take ATen tensors directly (csrc/cpu). CUDA kernels (csrc/cuda) are raw-pointer
// launchers without torch headers; the glue below turns tensors into pointers and strides.
#include <torch/extension.h>

#include "cpu/kernels.h"

#ifdef CAGUL_WITH_CUDA
// c10's stream/guard headers (not ATen/cuda/CUDAContext.h): the current stream without
// pulling in the cuBLAS/cuSPARSE headers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"

namespace {

cagul::cuda::ScalarType cuda_scalar_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return cagul::cuda::ScalarType::Float32;
    case at::kHalf:
      return cagul::cuda::ScalarType::Float16;
    case at::kBFloat16:
      return cagul::cuda::ScalarType::BFloat16;
    default:
      TORCH_CHECK(false, "expected a float32, float16 or bfloat16 tensor, got ", t.scalar_type());
  }
}

// Same contract as cagul::cpu::cross_modal_importance, on CUDA tensors. The kernel writes
// per-kv-head partial sums (or per-head sums), reduced here over kv heads in order.
at::Tensor cross_modal_importance_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                       const at::Tensor& lse, const at::Tensor& query_index,
                                       const at::Tensor& visual_index, double scale, bool causal,
                                       bool mean, bool per_head) {
  for (const at::Tensor* t : {&q_in, &k_in, &lse, &query_index, &visual_index}) {
    TORCH_CHECK(t->is_cuda() && t->device() == q_in.device(),
                "cross_modal_importance_cuda: all tensors must be on one CUDA device");
  }
  TORCH_CHECK(q_in.scalar_type() == k_in.scalar_type(), "q and k must share a dtype");
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "lse must be float32");
  TORCH_CHECK(query_index.scalar_type() == at::kLong && visual_index.scalar_type() == at::kLong &&
                  query_index.is_contiguous() && visual_index.is_contiguous(),
              "indices must be contiguous int64");
  TORCH_CHECK(q_in.size(3) <= cagul::cuda::kImportanceMaxHeadDim,
              "cross_modal_importance_cuda: head dim ", q_in.size(3), " > ",
              cagul::cuda::kImportanceMaxHeadDim, " is not supported");
  const c10::cuda::CUDAGuard guard(q_in.device());
  // The kernel reads rows with unit stride along D ([B, S, H, D] views qualify).
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const int64_t b = q.size(0), hq = q.size(1), hkv = k.size(1), nv = visual_index.size(1);
  at::Tensor out = at::empty({b, per_head ? hq : hkv, nv}, q.options().dtype(at::kFloat));
  const cagul::cuda::ImportanceArgs args{
      q.const_data_ptr(), k.const_data_ptr(), lse.const_data_ptr<float>(),
      query_index.const_data_ptr<int64_t>(), visual_index.const_data_ptr<int64_t>(),
      out.mutable_data_ptr<float>(), b, hq, hkv, q.size(3), query_index.size(1), nv,
      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
      lse.stride(0), lse.stride(1), lse.stride(2), static_cast<float>(scale), causal, per_head};
  const cudaError_t err = cagul::cuda::launch_cross_modal_importance(
      args, cuda_scalar_type(q), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "cross_modal_importance_cuda: ", cudaGetErrorString(err));
  if (!per_head) out = out.sum(1);  // fixed-order reduction over kv heads
  if (mean) {
    const at::Tensor n_valid = (query_index >= 0).sum(1).clamp_min(1).to(at::kFloat);
    out = per_head ? out / n_valid.view({b, 1, 1}) : out / (n_valid.view({b, 1}) * hq);
  }
  return out;
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
#ifdef CAGUL_WITH_CUDA
  m.def("cross_modal_importance_cuda", &cross_modal_importance_cuda,
        "Cross-modal attention importance (CUDA)", py::arg("q"), py::arg("k"), py::arg("lse"),
        py::arg("query_index"), py::arg("visual_index"), py::arg("scale"), py::arg("causal"),
        py::arg("mean"), py::arg("per_head"));
#endif
}
