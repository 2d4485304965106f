#include "latentfuse/backend.hpp"

namespace latentfuse {

std::vector<std::string> available_backends() {
  std::vector<std::string> out;
#ifdef LATENTFUSE_WITH_TORCH
  out.push_back("aoti");
#endif
#ifdef LATENTFUSE_WITH_TENSORRT
  out.push_back("tensorrt");
#endif
  return out;
}

std::unique_ptr<Runner> make_runner(const std::string& backend, const Bundle& bundle) {
  std::string built;
  for (const auto& b : available_backends()) built += (built.empty() ? "" : ", ") + b;
  if (built.empty()) built = "none";
  if (backend == "aoti") {
#ifdef LATENTFUSE_WITH_TORCH
    return make_aoti_runner(bundle);
#else
    throw Error("backend 'aoti' is not available: this latentfuse-host was built without libtorch "
                "(built backends: " + built + "); rebuild with runtime/cpp/build.sh where torch is installed");
#endif
  }
  if (backend == "tensorrt") {
#ifdef LATENTFUSE_WITH_TENSORRT
    return make_tensorrt_runner(bundle);
#else
    throw Error("backend 'tensorrt' is not available: this latentfuse-host was built without TensorRT/CUDA "
                "(built backends: " + built + "); rebuild where CMake finds TensorRT and the CUDA toolkit");
#endif
  }
  throw Error("unknown backend '" + backend + "': choose aoti or tensorrt (built: " + built + ")");
}

}  // namespace latentfuse
