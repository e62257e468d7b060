#include "op_helpers.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

namespace gct_fused::cuda {

at::Tensor mergeable_input(const at::Tensor& t) {
  return ChannelView::of(t).merged ? t : t.contiguous();
}

MapLayout layout_of(const at::Tensor& t) {
  const ChannelView v = ChannelView::of(t);
  TORCH_INTERNAL_ASSERT(v.merged, "gct_fused CUDA: a map's spatial dims must merge here");
  MapLayout m;
  m.data = t.const_data_ptr();
  m.stride_n = v.stride_n;
  m.stride_c = v.stride_c;
  m.stride_l = v.stride_l;
  return m;
}

OutputMap::OutputMap(const at::Tensor& like) : result_(at::empty_like(like)) {
  target_ = ChannelView::of(result_).merged ? result_ : at::empty(like.sizes(), like.options());
}

void OutputMap::finish() {
  if (!target_.is_same(result_)) result_.copy_(target_);
}

at::Tensor flat_param(const at::Tensor& p) { return p.contiguous(); }

at::TensorOptions acc_options(const at::Tensor& x) {
  return x.options().dtype(accumulate_dtype(x.scalar_type()));
}

}  // namespace gct_fused::cuda
