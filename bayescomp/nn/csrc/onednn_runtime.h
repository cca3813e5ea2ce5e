// The oneDNN engine and stream that every handler of the library shares (the convolutions of
// onednn_conv.cc, the batch normalisation of onednn_batch_norm.cc), and the lock that
// serialises their calls: a stream must not be used by two threads at once, and each
// primitive's execution already uses every core.
#ifndef BAYESCOMP_NN_CSRC_ONEDNN_RUNTIME_H_
#define BAYESCOMP_NN_CSRC_ONEDNN_RUNTIME_H_

#include <mutex>

#include "oneapi/dnnl/dnnl.hpp"

namespace bayescomp {

struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

// Created at the first call, which throws where the engine cannot be made (no OpenCL CPU
// device; the next call tries again); never destroyed, as XLA may call a handler while the
// interpreter exits. Inline: one instance for every source of the library.
inline Runtime& runtime() {
  static Runtime* r = new Runtime();
  return *r;
}

inline std::mutex& runtime_mutex() {
  static std::mutex* m = new std::mutex();
  return *m;
}

}  // namespace bayescomp

#endif  // BAYESCOMP_NN_CSRC_ONEDNN_RUNTIME_H_
