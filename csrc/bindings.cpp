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

cagul::cuda::ScalarType cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cagul::cuda::ScalarType::Float32;
    case at::kHalf: return cagul::cuda::ScalarType::Float16;
    case at::kBFloat16: return cagul::cuda::ScalarType::BFloat16;
    default: TORCH_CHECK(false, "CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor fp32_contiguous(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Same contract as cagul::cpu::cross_modal_importance, on CUDA tensors: per-head or
// per-kv-head column sums.
at::Tensor cross_modal_importance_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                       const at::Tensor& lse, const at::Tensor& query_index,
                                       const at::Tensor& visual_index, double scale, bool causal,
                                       bool per_head) {
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
  check_launch(cagul::cuda::launch_cross_modal_importance(args, cuda_dtype(q),
                                                         c10::cuda::getCurrentCUDAStream()),
               "cross_modal_importance_cuda");
  return out;
}

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
  check_launch(cagul::cuda::select_low_importance(
                   importance.const_data_ptr<float>(), importance.stride(0),
                   visual_index.const_data_ptr<int64_t>(), visual_index.stride(0),
                   counts64.const_data_ptr<int64_t>(), batch, nv, width,
                   reinterpret_cast<uint64_t*>(words.data_ptr<int64_t>()),
                   slots.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
                   c10::cuda::getCurrentCUDAStream()),
               "select_low_importance_cuda");
  return {slots, positions};
}

// See cagul::cpu::transform_scatter for the contract; weights are handed over as fp32.
std::vector<at::Tensor> transform_scatter_cuda(const at::Tensor& x, const at::Tensor& positions,
                                               const at::Tensor& w1, const at::Tensor& b1,
                                               const at::Tensor& w2, const at::Tensor& b2,
                                               const at::Tensor& gate, int64_t activation, bool inplace) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w1f = fp32_contiguous(w1), b1f = fp32_contiguous(b1);
  const at::Tensor w2f = fp32_contiguous(w2), b2f = fp32_contiguous(b2);
  const at::Tensor gatef = fp32_contiguous(gate), pos = positions.contiguous();
  const int64_t b_size = x.size(0), k = pos.size(1), d = x.size(2), r = w1.size(1);
  at::Tensor y = inplace ? x : at::empty(x.sizes(), x.options()).copy_(x);
  at::Tensor z = inplace ? at::Tensor() : at::zeros({b_size, k, r}, x.options().dtype(at::kFloat));
  cagul::cuda::TransformScatterForwardArgs args{};
  args.dtype = cuda_dtype(x);
  args.x = x.data_ptr();
  args.y = y.data_ptr();
  for (int i = 0; i < 3; ++i) {
    args.x_stride[i] = x.stride(i);
    args.y_stride[i] = y.stride(i);
  }
  args.positions = pos.const_data_ptr<int64_t>();
  args.gate = gatef.const_data_ptr<float>();
  args.w1 = w1f.const_data_ptr<float>();
  args.b1 = b1f.const_data_ptr<float>();
  args.w2 = w2f.const_data_ptr<float>();
  args.b2 = b2f.const_data_ptr<float>();
  args.z = inplace ? nullptr : z.data_ptr<float>();
  args.batch = b_size;
  args.slots = k;
  args.dim = d;
  args.rank = r;
  args.activation = static_cast<int>(activation);
  check_launch(cagul::cuda::transform_scatter_forward(args, c10::cuda::getCurrentCUDAStream()),
               "transform_scatter_cuda");
  if (inplace) return {};
  return {y, z};
}

std::vector<at::Tensor> transform_scatter_backward_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                        const at::Tensor& positions, const at::Tensor& z,
                                                        const at::Tensor& w1, const at::Tensor& w2,
                                                        const at::Tensor& gate, int64_t activation,
                                                        bool need_dx) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "transform_scatter: dy must match x in shape and dtype");
  const at::Tensor w1t = w1.to(at::kFloat).t().contiguous(), w2t = w2.to(at::kFloat).t().contiguous();
  const at::Tensor zf = fp32_contiguous(z), gatef = fp32_contiguous(gate), pos = positions.contiguous();
  const int64_t b_size = x.size(0), s = x.size(1), k = pos.size(1), d = x.size(2), r = w1.size(1);
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = need_dx ? at::empty(x.sizes(), x.options()).copy_(dy) : at::empty({0}, x.options());
  const int64_t total = 2 * d * r + d + r;
  const int64_t splits = cagul::cuda::transform_scatter_backward_splits(b_size, k, d);
  at::Tensor dz = at::zeros({b_size, k, r}, f32);
  at::Tensor partials = at::empty({std::max<int64_t>(splits, 1), total}, f32);
  at::Tensor grads = at::zeros({total}, f32);
  cagul::cuda::TransformScatterBackwardArgs args{};
  args.dtype = cuda_dtype(x);
  args.x = x.data_ptr();
  args.dy = dy.data_ptr();
  for (int i = 0; i < 3; ++i) {
    args.x_stride[i] = x.stride(i);
    args.dy_stride[i] = dy.stride(i);
  }
  args.dx = need_dx ? dx.data_ptr() : nullptr;
  args.positions = pos.const_data_ptr<int64_t>();
  args.gate = gatef.const_data_ptr<float>();
  args.z = zf.const_data_ptr<float>();
  args.w1t = w1t.const_data_ptr<float>();
  args.w2t = w2t.const_data_ptr<float>();
  args.dz = dz.data_ptr<float>();
  args.partials = partials.data_ptr<float>();
  args.grads = grads.data_ptr<float>();
  args.batch = b_size;
  args.seq = s;
  args.slots = k;
  args.dim = d;
  args.rank = r;
  args.activation = static_cast<int>(activation);
  check_launch(cagul::cuda::transform_scatter_backward(args, c10::cuda::getCurrentCUDAStream()),
               "transform_scatter_backward_cuda");
  const std::vector<at::Tensor> parts = grads.split_with_sizes({d * r, d * r, d, r});
  return {dx, parts[0].view({d, r}).to(w1.scalar_type(), false, true), parts[3].to(w1.scalar_type(), false, true),
          parts[1].view({r, d}).to(w2.scalar_type(), false, true), parts[2].to(w2.scalar_type(), false, true)};
}

}  // namespace
#endif  // CAGUL_WITH_CUDA

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
        py::arg("per_head"));
  m.def("select_low_importance_cpu", &cagul::cpu::select_low_importance,
        "Lowest-importance visual tokens per row (CPU)", py::arg("importance"),
        py::arg("visual_index"), py::arg("k"), py::arg("ratio"));
  m.def("transform_scatter_cpu", &cagul::cpu::transform_scatter,
        "Residual MLP on selected rows, scattered back (CPU): [y, z], or [] in place", py::arg("x"),
        py::arg("positions"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"),
        py::arg("gate"), py::arg("activation"), py::arg("inplace"));
  m.def("transform_scatter_backward_cpu", &cagul::cpu::transform_scatter_backward,
        "Gradients of transform_scatter (CPU): [dx, dw1, db1, dw2, db2]", py::arg("dy"),
        py::arg("x"), py::arg("positions"), py::arg("z"), py::arg("w1"), py::arg("w2"),
        py::arg("gate"), py::arg("activation"), py::arg("need_dx"));
#ifdef CAGUL_WITH_CUDA
  m.def("cross_modal_importance_cuda", &cross_modal_importance_cuda,
        "Cross-modal attention importance (CUDA)", py::arg("q"), py::arg("k"), py::arg("lse"),
        py::arg("query_index"), py::arg("visual_index"), py::arg("scale"), py::arg("causal"),
        py::arg("per_head"));
  m.def("select_low_importance_cuda", &select_low_importance_cuda,
        "Lowest-importance visual tokens per row (CUDA)", py::arg("importance"),
        py::arg("visual_index"), py::arg("counts"), py::arg("width"));
  m.def("transform_scatter_cuda", &transform_scatter_cuda,
        "Residual MLP on selected rows, scattered back (CUDA): [y, z], or [] in place", py::arg("x"),
        py::arg("positions"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"),
        py::arg("gate"), py::arg("activation"), py::arg("inplace"));
  m.def("transform_scatter_backward_cuda", &transform_scatter_backward_cuda,
        "Gradients of transform_scatter (CUDA): [dx, dw1, db1, dw2, db2]", py::arg("dy"),
        py::arg("x"), py::arg("positions"), py::arg("z"), py::arg("w1"), py::arg("w2"),
        py::arg("gate"), py::arg("activation"), py::arg("need_dx"));
#endif
}
