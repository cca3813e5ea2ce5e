// 2-D convolution (NHWC inputs, HWIO kernels, float32) and its two gradients through oneDNN, as
// XLA FFI handlers for the CPU backend. Built and loaded by bayescomp/nn/onednn_conv.py, which
// says why (XLA:CPU's own convolutions run at a third of this CPU's GEMM rate) and when it is
// used.
//
// Each handler looks up (or creates once) the oneDNN primitive for its shapes. Activations stay
// in XLA's NHWC buffers (oneDNN's nhwc format, read and written in place); the kernel, whose
// HWIO layout the fast implementations do not take, is reordered into the primitive's own
// layout on the way in (forward, input gradient) and out (kernel gradient). The forward and the
// kernel gradient also come with a bias: the forward adds it as it writes the output, the kernel
// gradient sums the bias gradient in the same pass over the output gradient (no separate pass of
// XLA over either activation). The calls hold the library's one lock (onednn_runtime.h): a
// primitive's execution already uses every core, and the cached weight buffers are shared.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "onednn_runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = memory::format_tag;

enum Kind : int64_t {
  kForward = 0,
  kInputGradient = 1,
  kKernelGradient = 2,
  kForwardBias = 3,         // y = x * W + b
  kKernelGradientBias = 4,  // dW and db = sum of dy over batch and positions
};

// kind, n, h, w, c, o, kh, kw, stride h, stride w, pad top, bottom, left, right
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Geometry {
  int64_t n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pb, pl, pr;
};

struct Primitive {
  dnnl::primitive conv;
  memory::desc user_kernel;    // HWIO, as XLA stores it
  memory::desc native_kernel;  // the primitive's layout
  memory::desc bias;           // the bias (or its gradient), for the two bias kinds
  memory native_kernel_buffer;
  bool reorder_kernel = false;
  dnnl::reorder reorder;  // user -> native (forward, input gradient), native -> user
};

// The primitives made so far, by shape (under the library's lock).
std::map<Key, std::unique_ptr<Primitive>>& cache() {
  static auto* c = new std::map<Key, std::unique_ptr<Primitive>>();  // never destroyed
  return *c;
}

memory::desc activation(int64_t n, int64_t c, int64_t h, int64_t w) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, tag::nhwc);
}

Primitive* lookup(Kind kind, const Geometry& g) {
  bayescomp::Runtime& s = bayescomp::runtime();
  Key key{kind, g.n, g.h, g.w, g.c, g.o, g.kh, g.kw, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr};
  auto found = cache().find(key);
  if (found != cache().end()) return found->second.get();

  auto src = activation(g.n, g.c, g.h, g.w);
  auto dst = activation(g.n, g.o, g.oh, g.ow);
  memory::dims kernel_dims{g.o, g.c, g.kh, g.kw};
  auto user_kernel = memory::desc(kernel_dims, memory::data_type::f32, tag::hwio);
  auto any_kernel = memory::desc(kernel_dims, memory::data_type::f32, tag::any);
  auto bias = memory::desc({g.o}, memory::data_type::f32, tag::a);
  const bool with_bias = kind == kForwardBias || kind == kKernelGradientBias;
  memory::dims strides{g.sh, g.sw}, pad_low{g.pt, g.pl}, pad_high{g.pb, g.pr};
  auto forward =
      with_bias ? dnnl::convolution_forward::primitive_desc(
                      s.engine, dnnl::prop_kind::forward_training,
                      dnnl::algorithm::convolution_direct, src, any_kernel, bias, dst, strides,
                      pad_low, pad_high)
                : dnnl::convolution_forward::primitive_desc(
                      s.engine, dnnl::prop_kind::forward_training,
                      dnnl::algorithm::convolution_direct, src, any_kernel, dst, strides,
                      pad_low, pad_high);

  auto p = std::make_unique<Primitive>();
  p->user_kernel = user_kernel;
  if (kind == kForward || kind == kForwardBias) {
    p->conv = dnnl::convolution_forward(forward);
    p->native_kernel = forward.weights_desc();
    p->bias = forward.bias_desc();
  } else if (kind == kInputGradient) {
    auto backward = dnnl::convolution_backward_data::primitive_desc(
        s.engine, dnnl::algorithm::convolution_direct, src, any_kernel, dst, strides, pad_low,
        pad_high, forward);
    p->conv = dnnl::convolution_backward_data(backward);
    p->native_kernel = backward.weights_desc();
  } else if (kind == kKernelGradientBias) {
    auto backward = dnnl::convolution_backward_weights::primitive_desc(
        s.engine, dnnl::algorithm::convolution_direct, src, any_kernel, bias, dst, strides,
        pad_low, pad_high, forward);
    p->conv = dnnl::convolution_backward_weights(backward);
    p->native_kernel = backward.diff_weights_desc();
    p->bias = backward.diff_bias_desc();
  } else {
    auto backward = dnnl::convolution_backward_weights::primitive_desc(
        s.engine, dnnl::algorithm::convolution_direct, src, any_kernel, dst, strides, pad_low,
        pad_high, forward);
    p->conv = dnnl::convolution_backward_weights(backward);
    p->native_kernel = backward.diff_weights_desc();
  }
  p->reorder_kernel = p->native_kernel != user_kernel;
  if (p->reorder_kernel) {
    p->native_kernel_buffer = memory(p->native_kernel, s.engine);
    if (kind == kKernelGradient || kind == kKernelGradientBias) {
      p->reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
          s.engine, p->native_kernel, s.engine, user_kernel));
    } else {
      p->reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
          s.engine, user_kernel, s.engine, p->native_kernel));
    }
  }
  Primitive* raw = p.get();
  cache().emplace(key, std::move(p));
  return raw;
}

ffi::Error geometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> kernel_dims,
                    ffi::Span<const int64_t> y_dims, ffi::Span<const int64_t> strides,
                    ffi::Span<const int64_t> padding, Geometry* g) {
  if (x_dims.size() != 4 || kernel_dims.size() != 4 || y_dims.size() != 4 ||
      strides.size() != 2 || padding.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn conv: expected NHWC/HWIO operands, 2 strides and 4 pads");
  }
  *g = Geometry{x_dims[0], x_dims[1], x_dims[2], x_dims[3], kernel_dims[3], kernel_dims[0],
                kernel_dims[1], y_dims[1], y_dims[2], strides[0], strides[1], padding[0],
                padding[1], padding[2], padding[3]};
  if (kernel_dims[2] != g->c || y_dims[0] != g->n || y_dims[3] != g->o) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: operand shapes disagree");
  }
  return ffi::Error::Success();
}

// Runs `kind` with the activations `x` (source or its gradient) and `y` (destination or its
// gradient), the kernel buffer `kernel` (HWIO; read, or written for the kernel gradient) and,
// for the two bias kinds, the bias buffer `bias` (read, or written with its gradient).
ffi::Error run(Kind kind, const Geometry& g, float* x, float* kernel, float* y,
               float* bias = nullptr) {
  std::lock_guard<std::mutex> lock(bayescomp::runtime_mutex());
  try {
    // creates the engine on first use, which can fail (no OpenCL device)
    bayescomp::Runtime& s = bayescomp::runtime();
    Primitive* p = lookup(kind, g);
    memory x_mem(activation(g.n, g.c, g.h, g.w), s.engine, x);
    memory y_mem(activation(g.n, g.o, g.oh, g.ow), s.engine, y);
    memory user_kernel(p->user_kernel, s.engine, kernel);
    memory native = p->reorder_kernel ? p->native_kernel_buffer : user_kernel;
    const bool with_bias = kind == kForwardBias || kind == kKernelGradientBias;
    if (with_bias != (bias != nullptr)) {
      return ffi::Error(ffi::ErrorCode::kInternal, "onednn conv: bias buffer and kind disagree");
    }
    memory bias_mem;
    if (with_bias) bias_mem = memory(p->bias, s.engine, bias);
    if (kind == kForward || kind == kForwardBias) {
      if (p->reorder_kernel) p->reorder.execute(s.stream, user_kernel, native);
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, native}, {DNNL_ARG_DST, y_mem}};
      if (kind == kForwardBias) args.emplace(DNNL_ARG_BIAS, bias_mem);
      p->conv.execute(s.stream, args);
    } else if (kind == kInputGradient) {
      if (p->reorder_kernel) p->reorder.execute(s.stream, user_kernel, native);
      p->conv.execute(s.stream, {{DNNL_ARG_DIFF_SRC, x_mem}, {DNNL_ARG_WEIGHTS, native},
                                 {DNNL_ARG_DIFF_DST, y_mem}});
    } else {
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_WEIGHTS, native}, {DNNL_ARG_DIFF_DST, y_mem}};
      if (kind == kKernelGradientBias) args.emplace(DNNL_ARG_DIFF_BIAS, bias_mem);
      p->conv.execute(s.stream, args);
      if (p->reorder_kernel) p->reorder.execute(s.stream, native, user_kernel);
    }
    s.stream.wait();
  } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc, SYCL exceptions
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error bias_shape(ffi::Span<const int64_t> bias_dims, const Geometry& g) {
  if (bias_dims.size() != 1 || bias_dims[0] != g.o) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn conv: the bias must have one entry per output channel");
  }
  return ffi::Error::Success();
}

// The forward pass, adding `bias` where it is given.
ffi::Error forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::Buffer<ffi::F32>* bias, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto e = geometry(x.dimensions(), kernel.dimensions(), y->dimensions(), strides, padding, &g);
      e.failure()) {
    return e;
  }
  if (bias == nullptr) {
    return run(kForward, g, x.typed_data(), kernel.typed_data(), y->typed_data());
  }
  if (auto e = bias_shape(bias->dimensions(), g); e.failure()) return e;
  return run(kForwardBias, g, x.typed_data(), kernel.typed_data(), y->typed_data(),
             bias->typed_data());
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding) {
  return forward(x, kernel, nullptr, y, strides, padding);
}

ffi::Error ForwardBias(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return forward(x, kernel, &bias, y, strides, padding);
}

ffi::Error InputGradient(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                         ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> strides,
                         ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto e = geometry(dx->dimensions(), kernel.dimensions(), dy.dimensions(), strides,
                        padding, &g);
      e.failure()) {
    return e;
  }
  return run(kInputGradient, g, dx->typed_data(), kernel.typed_data(), dy.typed_data());
}

// The kernel gradient, and the bias gradient where `dbias` is given.
ffi::Error kernel_gradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dkernel,
                           ffi::ResultBuffer<ffi::F32>* dbias, ffi::Span<const int64_t> strides,
                           ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto e = geometry(x.dimensions(), dkernel->dimensions(), dy.dimensions(), strides,
                        padding, &g);
      e.failure()) {
    return e;
  }
  if (dbias == nullptr) {
    return run(kKernelGradient, g, x.typed_data(), dkernel->typed_data(), dy.typed_data());
  }
  if (auto e = bias_shape((*dbias)->dimensions(), g); e.failure()) return e;
  return run(kKernelGradientBias, g, x.typed_data(), dkernel->typed_data(), dy.typed_data(),
             (*dbias)->typed_data());
}

ffi::Error KernelGradient(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dkernel, ffi::Span<const int64_t> strides,
                          ffi::Span<const int64_t> padding) {
  return kernel_gradient(x, dy, dkernel, nullptr, strides, padding);
}

ffi::Error KernelGradientBias(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                              ffi::ResultBuffer<ffi::F32> dkernel,
                              ffi::ResultBuffer<ffi::F32> dbias,
                              ffi::Span<const int64_t> strides,
                              ffi::Span<const int64_t> padding) {
  return kernel_gradient(x, dy, dkernel, &dbias, strides, padding);
}

}  // namespace

// The handlers' signatures: two float32 operands, then one float32 result (the three without a
// bias), an operand and a result (the forward with a bias) or two results (the kernel gradient
// with the bias gradient); then the strides and the (top, bottom, left, right) padding.
using F32Buffer = ffi::Buffer<ffi::F32>;

auto TwoOperands() { return ffi::Ffi::Bind().Arg<F32Buffer>().Arg<F32Buffer>(); }

template <typename Binding>
auto WithGeometry(Binding binding) {
  return std::move(binding)
      .template Attr<ffi::Span<const int64_t>>("strides")
      .template Attr<ffi::Span<const int64_t>>("padding");
}

auto ConvBinding() { return WithGeometry(TwoOperands().Ret<F32Buffer>()); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnConvForward, Forward, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnConvInputGradient, InputGradient, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnConvKernelGradient, KernelGradient, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnConvForwardBias, ForwardBias,
                              WithGeometry(TwoOperands().Arg<F32Buffer>().Ret<F32Buffer>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(BayescompOnednnConvKernelGradientBias, KernelGradientBias,
                              WithGeometry(TwoOperands().Ret<F32Buffer>().Ret<F32Buffer>()));
