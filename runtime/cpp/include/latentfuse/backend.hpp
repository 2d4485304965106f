// One C++ interface over the inference backends (the twin of runtime/backends/base.py, reduced to
// what differs between backends: running one deployed graph on host tensors). Inputs and outputs
// are in the graph's manifest order; the pipeline builds them by role (GraphInfo::input_for).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "latentfuse/bundle.hpp"
#include "latentfuse/tensor.hpp"

namespace latentfuse {

class Runner {
 public:
  virtual ~Runner() = default;
  virtual std::string name() const = 0;
  // Runs `graph` on `inputs` (manifest input order) and returns its outputs (manifest order) as
  // float32 host tensors.
  virtual std::vector<Tensor> run(const GraphInfo& graph, const std::vector<Tensor>& inputs) = 0;
  // Waits for queued device work so stage timings are honest (no-op on CPU).
  virtual void synchronize() {}
  // Smallest padded image side the backend accepts (a profile / export minimum).
  virtual int min_side() const { return kPixelMultiple; }
  // Largest (height, width) the backend accepts, or {0, 0} for no limit beyond the manifest's.
  virtual std::pair<int, int> max_size() const { return {0, 0}; }
  // Most rows one DiT call takes (a TensorRT profile's / an AOTInductor package's maximum batch), or 0
  // for no limit; the pipeline's batched DiT windows are chunked to it (runtime.backends.base.max_batch_size).
  virtual int max_batch() const { return 0; }
};

// Backends compiled into this build ("aoti" with libtorch, "tensorrt" with TensorRT + CUDA).
std::vector<std::string> available_backends();

// The named backend over `bundle`; an Error naming the missing piece when it was not built or the
// bundle has no artefacts for it.
std::unique_ptr<Runner> make_runner(const std::string& backend, const Bundle& bundle);

#ifdef LATENTFUSE_WITH_TORCH
std::unique_ptr<Runner> make_aoti_runner(const Bundle& bundle);
#endif
#ifdef LATENTFUSE_WITH_TENSORRT
std::unique_ptr<Runner> make_tensorrt_runner(const Bundle& bundle);
#endif

}  // namespace latentfuse
