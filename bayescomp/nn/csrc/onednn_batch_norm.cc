// Batch normalisation with batch statistics (training), optionally followed by a ReLU, and its
// gradient through oneDNN, as XLA FFI handlers for the CPU backend. Built with
// onednn_conv.cc into one library by bayescomp/nn/onednn_conv.py and used by
// bayescomp/nn/onednn_batch_norm.py, which says why (fewer passes over each activation than
// XLA:CPU's fusions make).
//
// Activations are float32, channels last: (n, h, w, c) in oneDNN's nhwc format, or (n, c) as
// (n, c, 1, 1). The forward writes y, the batch mean and the biased batch variance; with the
// ReLU it also writes a workspace (a bit per element, oneDNN's own format) that the backward
// reads to mask the output gradient. The backward writes the input, scale and shift gradients.
// Primitives are created once per shape, epsilon and ReLU flag; the calls hold the library's one
// lock with the convolutions' (onednn_runtime.h).
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;

// relu, n, c, h, w, epsilon's bits
using Key = std::tuple<bool, int64_t, int64_t, int64_t, int64_t, uint32_t>;

struct Primitives {
  dnnl::batch_normalization_forward forward;
  dnnl::batch_normalization_backward backward;
  memory::desc data, channel, workspace;
};

// The primitives made so far (under the library's lock).
std::map<Key, std::unique_ptr<Primitives>>& cache() {
  static auto* c = new std::map<Key, std::unique_ptr<Primitives>>();  // never destroyed
  return *c;
}

struct Shape {
  int64_t n, c, h, w;
};

// (n, h, w, c) or (n, c); anything else is refused.
bool shape_of(ffi::Span<const int64_t> dims, Shape* s) {
  if (dims.size() == 4) {
    *s = Shape{dims[0], dims[3], dims[1], dims[2]};
  } else if (dims.size() == 2) {
    *s = Shape{dims[0], dims[1], 1, 1};
  } else {
    return false;
  }
  return s->n > 0 && s->c > 0 && s->h > 0 && s->w > 0;
}

Primitives* lookup(bool relu, const Shape& shape, float epsilon) {
  bayescomp::Runtime& s = bayescomp::runtime();
  uint32_t epsilon_bits;
  std::memcpy(&epsilon_bits, &epsilon, sizeof epsilon_bits);
  Key key{relu, shape.n, shape.c, shape.h, shape.w, epsilon_bits};
  auto found = cache().find(key);
  if (found != cache().end()) return found->second.get();
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (relu) flags = flags | dnnl::normalization_flags::fuse_norm_relu;
  auto p = std::make_unique<Primitives>();
  p->data = memory::desc({shape.n, shape.c, shape.h, shape.w}, memory::data_type::f32,
                         memory::format_tag::nhwc);
  p->channel = memory::desc({shape.c}, memory::data_type::f32, memory::format_tag::a);
  auto forward = dnnl::batch_normalization_forward::primitive_desc(
      s.engine, dnnl::prop_kind::forward_training, p->data, p->data, epsilon, flags);
  auto backward = dnnl::batch_normalization_backward::primitive_desc(
      s.engine, dnnl::prop_kind::backward, p->data, p->data, p->data, epsilon, flags, forward);
  p->forward = dnnl::batch_normalization_forward(forward);
  p->backward = dnnl::batch_normalization_backward(backward);
  p->workspace = forward.workspace_desc();
  Primitives* raw = p.get();
  cache().emplace(key, std::move(p));
  return raw;
}

ffi::Error invalid(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn batch norm: " + what);
}

// Checks the per-channel operands and the workspace against the activation's shape.
ffi::Error check(const Shape& shape, std::initializer_list<size_t> channel_sizes,
                 size_t workspace_bytes, const Primitives* p, bool relu) {
  for (size_t size : channel_sizes) {
    if (static_cast<int64_t>(size) != shape.c) {
      return invalid("scale, shift, mean and variance must have one entry per channel");
    }
  }
  if (relu && workspace_bytes < p->workspace.get_size()) {
    return invalid("the ReLU workspace is smaller than oneDNN's (" +
                   std::to_string(p->workspace.get_size()) + " bytes)");
  }
  return ffi::Error::Success();
}

template <bool Relu>
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> variance,
                   ffi::ResultBuffer<ffi::U8> workspace, float epsilon) {
  Shape shape;
  if (!shape_of(x.dimensions(), &shape)) return invalid("expected a non-empty (n, h, w, c) or (n, c)");
  if (y->dimensions().size() != x.dimensions().size() || y->element_count() != x.element_count()) {
    return invalid("the output must have the input's shape");
  }
  std::lock_guard<std::mutex> lock(bayescomp::runtime_mutex());
  try {
    bayescomp::Runtime& s = bayescomp::runtime();
    Primitives* p = lookup(Relu, shape, epsilon);
    if (auto e = check(shape, {scale.element_count(), shift.element_count(),
                               mean->element_count(), variance->element_count()},
                       workspace->size_bytes(), p, Relu);
        e.failure()) {
      return e;
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(p->data, s.engine, x.typed_data())},
        {DNNL_ARG_DST, memory(p->data, s.engine, y->typed_data())},
        {DNNL_ARG_SCALE, memory(p->channel, s.engine, scale.typed_data())},
        {DNNL_ARG_SHIFT, memory(p->channel, s.engine, shift.typed_data())},
        {DNNL_ARG_MEAN, memory(p->channel, s.engine, mean->typed_data())},
        {DNNL_ARG_VARIANCE, memory(p->channel, s.engine, variance->typed_data())}};
    if (Relu) {
      args.emplace(DNNL_ARG_WORKSPACE,
                   memory(p->workspace, s.engine, workspace->untyped_data()));
    }
    p->forward.execute(s.stream, args);
    s.stream.wait();
  } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc, SYCL exceptions
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn batch norm: ") + e.what());
  }
  return ffi::Error::Success();
}

template <bool Relu>
ffi::Error Backward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> variance, ffi::Buffer<ffi::F32> dy,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::U8> workspace,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                    ffi::ResultBuffer<ffi::F32> dshift, float epsilon) {
  Shape shape;
  if (!shape_of(x.dimensions(), &shape)) return invalid("expected a non-empty (n, h, w, c) or (n, c)");
  if (dy.element_count() != x.element_count() || dx->element_count() != x.element_count()) {
    return invalid("the gradients must have the input's shape");
  }
  std::lock_guard<std::mutex> lock(bayescomp::runtime_mutex());
  try {
    bayescomp::Runtime& s = bayescomp::runtime();
    Primitives* p = lookup(Relu, shape, epsilon);
    if (auto e = check(shape, {mean.element_count(), variance.element_count(),
                               scale.element_count(), dscale->element_count(),
                               dshift->element_count()},
                       workspace.size_bytes(), p, Relu);
        e.failure()) {
      return e;
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(p->data, s.engine, x.typed_data())},
        {DNNL_ARG_MEAN, memory(p->channel, s.engine, mean.typed_data())},
        {DNNL_ARG_VARIANCE, memory(p->channel, s.engine, variance.typed_data())},
        {DNNL_ARG_DIFF_DST, memory(p->data, s.engine, dy.typed_data())},
        {DNNL_ARG_SCALE, memory(p->channel, s.engine, scale.typed_data())},
        {DNNL_ARG_DIFF_SRC, memory(p->data, s.engine, dx->typed_data())},
        {DNNL_ARG_DIFF_SCALE, memory(p->channel, s.engine, dscale->typed_data())},
        {DNNL_ARG_DIFF_SHIFT, memory(p->channel, s.engine, dshift->typed_data())}};
    if (Relu) {
      args.emplace(DNNL_ARG_WORKSPACE, memory(p->workspace, s.engine, workspace.untyped_data()));
    }
    p->backward.execute(s.stream, args);
    s.stream.wait();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn batch norm: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// Bytes of the ReLU workspace for an activation of n·h·w positions and c channels (what the
// forward's fourth result must hold), or -1 where oneDNN cannot build the primitive. Called
// from Python (ctypes) while a step is traced.
extern "C" int64_t BayescompOnednnBatchNormWorkspaceBytes(int64_t n, int64_t h, int64_t w,
                                                          int64_t c, float epsilon) {
  std::lock_guard<std::mutex> lock(bayescomp::runtime_mutex());
  try {
    return static_cast<int64_t>(lookup(true, Shape{n, c, h, w}, epsilon)->workspace.get_size());
  } catch (const std::exception&) {
    return -1;
  }
}

using F32Buffer = ffi::Buffer<ffi::F32>;
using F32Result = ffi::ResultBuffer<ffi::F32>;

// x, scale, shift -> y, mean, variance, workspace (bytes; unused without the ReLU).
auto ForwardBinding() {
  return ffi::Ffi::Bind()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Ret<F32Buffer>()
      .Ret<F32Buffer>()
      .Ret<F32Buffer>()
      .Ret<ffi::Buffer<ffi::U8>>()
      .Attr<float>("epsilon");
}

// x, mean, variance, dy, scale, workspace -> dx, dscale, dshift.
auto BackwardBinding() {
  return ffi::Ffi::Bind()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<F32Buffer>()
      .Arg<ffi::Buffer<ffi::U8>>()
      .Ret<F32Buffer>()
      .Ret<F32Buffer>()
      .Ret<F32Buffer>()
      .Attr<float>("epsilon");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnBatchNormForward, Forward<false>, ForwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnBatchNormForwardRelu, Forward<true>,
                              ForwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnBatchNormBackward, Backward<false>,
                              BackwardBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnBatchNormBackwardRelu, Backward<true>,
                              BackwardBinding());
