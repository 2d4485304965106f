// TensorRT backend (TensorRT 10.x and 11.x C++ API): the bundle's engines (manifest "engines", written
// by `latentfuse build-engines`), one CUDA stream, one device-memory scratch block shared by every
// execution context (contexts created with kUSER_MANAGED allocation and given the largest engine's
// requirement), inputs bound per call with setInputShape / setTensorAddress, run with enqueueV3.
// Compiled only when CMake finds TensorRT and CUDA, which the build / CI machines lack (docs/design.md
// "Backends and hosts").
#include <NvInfer.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <iostream>
#include <map>

#include "latentfuse/backend.hpp"

namespace latentfuse {

namespace {

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

size_t dtype_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kINT64: return 8;
    default: throw Error("TensorRT engine I/O uses a data type this host does not convert (float32, float16, int32, int64)");
  }
}

// A device buffer that grows to the largest size asked of it.
struct DeviceBuffer {
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* ptr = nullptr;
  size_t bytes = 0;
  void* reserve(size_t n) {
    if (n > bytes) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
      bytes = n;
    }
    return ptr;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

struct Engine {
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
};

std::string trt_version() {
  return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." + std::to_string(NV_TENSORRT_PATCH);
}

class TensorRtRunner : public Runner {
 public:
  explicit TensorRtRunner(const Bundle& bundle) : image_input_(bundle.input_for("vae_encoder", "image")) {
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error("cannot create the TensorRT runtime");
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const json& table = bundle.manifest().value("engines", json::object());
    size_t scratch = 0;
    for (const auto& [name, entry] : table.items()) {
      const std::string file = entry.is_string() ? entry.get<std::string>() : entry.at("file").get<std::string>();
      if (entry.is_object()) {  // an engine only deserializes on the TensorRT version and GPU it was built for
        const std::string built_for = entry.value("trt_version", "");
        if (!built_for.empty() && built_for.rfind(trt_version(), 0) != 0 && trt_version().rfind(built_for, 0) != 0) continue;
        const json gpu = entry.value("gpu", json());
        const std::string gpu_name = gpu.is_object() ? gpu.value("name", "") : gpu.is_string() ? gpu.get<std::string>() : "";
        if (!gpu_name.empty() && gpu_name != prop.name) continue;
      }
      std::ifstream in(bundle.root() / file, std::ios::binary);
      std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      Engine e;
      e.engine.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
      if (!e.engine) throw Error("cannot deserialize TensorRT engine " + (bundle.root() / file).string() + " with TensorRT " + trt_version());
      e.context.reset(e.engine->createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kUSER_MANAGED));
      if (!e.context) throw Error("cannot create an execution context for engine " + file);
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 1)
      scratch = std::max<size_t>(scratch, static_cast<size_t>(e.engine->getDeviceMemorySizeV2()));
#else
      scratch = std::max<size_t>(scratch, e.engine->getDeviceMemorySize());
#endif
      engines_[name] = std::move(e);
    }
    if (engines_.empty())
      throw Error(bundle.root().string() + " has no TensorRT engines for TensorRT " + trt_version() + " on " + prop.name +
                  "; build them with `latentfuse build-engines --bundle " + bundle.root().string() + "`");
    // Contexts run one at a time on one stream, so they can share one scratch block.
    void* mem = scratch_.reserve(std::max<size_t>(scratch, 1));
    for (auto& [_, e] : engines_) {
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 1)
      e.context->setDeviceMemoryV2(mem, static_cast<int64_t>(scratch));
#else
      e.context->setDeviceMemory(mem);
#endif
    }
  }

  ~TensorRtRunner() override {
    engines_.clear();
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "tensorrt"; }

  void synchronize() override { cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

  int min_side() const override {
    const auto d = profile("vae_encoder", image_input_.c_str(), nvinfer1::OptProfileSelector::kMIN);
    return static_cast<int>(std::max(d.d[2], d.d[3]));
  }

  std::pair<int, int> max_size() const override {
    const auto d = profile("vae_encoder", image_input_.c_str(), nvinfer1::OptProfileSelector::kMAX);
    return {static_cast<int>(d.d[2]), static_cast<int>(d.d[3])};
  }

  // The DiT engines' profile max batch (runtime.backends.tensorrt_backend.max_batch_size): batched
  // windows are chunked to it.
  int max_batch() const override {
    int most = 0;
    for (const auto& [name, e] : engines_) {
      if (name.rfind("dit_", 0) != 0) continue;
      for (int32_t k = 0; k < e.engine->getNbIOTensors(); ++k) {
        const char* io = e.engine->getIOTensorName(k);
        if (e.engine->getTensorIOMode(io) != nvinfer1::TensorIOMode::kINPUT) continue;
        const int rows = static_cast<int>(e.engine->getProfileShape(io, 0, nvinfer1::OptProfileSelector::kMAX).d[0]);
        most = most == 0 ? rows : std::min(most, rows);
        break;  // the first input, as the Python backend reads it
      }
    }
    return most;
  }

  std::vector<Tensor> run(const GraphInfo& graph, const std::vector<Tensor>& inputs) override {
    auto it = engines_.find(graph.name);
    if (it == engines_.end()) throw Error("no TensorRT engine for graph '" + graph.name + "' in the bundle");
    auto& engine = *it->second.engine;
    auto& ctx = *it->second.context;
    for (size_t k = 0; k < inputs.size(); ++k) {
      const std::string& name = graph.inputs[k].name;
      const Tensor& t = inputs[k];
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(t.shape.size());
      for (size_t j = 0; j < t.shape.size(); ++j) dims.d[j] = t.shape[j];
      if (!ctx.setInputShape(name.c_str(), dims))
        throw Error("graph '" + graph.name + "': input '" + name + "' shape " + shape_str(t.shape) +
                    " is outside the engine's optimization profile");
      const auto type = engine.getTensorDataType(name.c_str());
      std::vector<char> host(static_cast<size_t>(t.size()) * dtype_size(type));
      for (int64_t e = 0; e < t.size(); ++e) {
        const double v = t.dtype == DType::Float32 ? t.f[e] : static_cast<double>(t.i[e]);
        switch (type) {
          case nvinfer1::DataType::kFLOAT: reinterpret_cast<float*>(host.data())[e] = static_cast<float>(v); break;
          case nvinfer1::DataType::kHALF: reinterpret_cast<__half*>(host.data())[e] = __float2half(static_cast<float>(v)); break;
          case nvinfer1::DataType::kINT32: reinterpret_cast<int32_t*>(host.data())[e] = static_cast<int32_t>(v); break;
          default: reinterpret_cast<int64_t*>(host.data())[e] = t.dtype == DType::Int64 ? t.i[e] : static_cast<int64_t>(v);
        }
      }
      void* dev = buffers_[graph.name + "/" + name].reserve(host.size());
      cuda_check(cudaMemcpyAsync(dev, host.data(), host.size(), cudaMemcpyHostToDevice, stream_), "upload");
      ctx.setTensorAddress(name.c_str(), dev);
      staging_.push_back(std::move(host));  // the async copy reads it until the stream syncs
    }
    std::vector<std::pair<std::vector<int64_t>, nvinfer1::DataType>> out_meta;
    for (const auto& o : graph.outputs) {
      const nvinfer1::Dims d = ctx.getTensorShape(o.name.c_str());
      std::vector<int64_t> shape(d.d, d.d + d.nbDims);
      const auto type = engine.getTensorDataType(o.name.c_str());
      void* dev = buffers_[graph.name + "/" + o.name].reserve(static_cast<size_t>(numel(shape)) * dtype_size(type));
      ctx.setTensorAddress(o.name.c_str(), dev);
      out_meta.emplace_back(shape, type);
    }
    if (!ctx.enqueueV3(stream_)) throw Error("TensorRT enqueueV3 failed for graph '" + graph.name + "'");
    std::vector<std::vector<char>> host_out;
    for (size_t k = 0; k < graph.outputs.size(); ++k) {
      const auto& [shape, type] = out_meta[k];
      host_out.emplace_back(static_cast<size_t>(numel(shape)) * dtype_size(type));
      cuda_check(cudaMemcpyAsync(host_out.back().data(), buffers_[graph.name + "/" + graph.outputs[k].name].ptr,
                                 host_out.back().size(), cudaMemcpyDeviceToHost, stream_), "download");
    }
    synchronize();
    staging_.clear();
    std::vector<Tensor> result;
    for (size_t k = 0; k < graph.outputs.size(); ++k) {
      const auto& [shape, type] = out_meta[k];
      std::vector<float> values(static_cast<size_t>(numel(shape)));
      for (size_t e = 0; e < values.size(); ++e) {
        const char* p = host_out[k].data();
        switch (type) {
          case nvinfer1::DataType::kFLOAT: values[e] = reinterpret_cast<const float*>(p)[e]; break;
          case nvinfer1::DataType::kHALF: values[e] = __half2float(reinterpret_cast<const __half*>(p)[e]); break;
          case nvinfer1::DataType::kINT32: values[e] = static_cast<float>(reinterpret_cast<const int32_t*>(p)[e]); break;
          default: values[e] = static_cast<float>(reinterpret_cast<const int64_t*>(p)[e]);
        }
      }
      result.push_back(Tensor::from_float(shape, std::move(values)));
    }
    return result;
  }

 private:
  nvinfer1::Dims profile(const std::string& graph, const char* input, nvinfer1::OptProfileSelector which) const {
    auto it = engines_.find(graph);
    if (it == engines_.end()) throw Error("no TensorRT engine for graph '" + graph + "' in the bundle");
    return it->second.engine->getProfileShape(input, 0, which);
  }

  Logger logger_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::map<std::string, Engine> engines_;
  std::string image_input_;  // the vae_encoder input with role "image" (its profile bounds the image size)
  DeviceBuffer scratch_;
  std::map<std::string, DeviceBuffer> buffers_;
  std::vector<std::vector<char>> staging_;
};

}  // namespace

std::unique_ptr<Runner> make_tensorrt_runner(const Bundle& bundle) { return std::make_unique<TensorRtRunner>(bundle); }

}  // namespace latentfuse
