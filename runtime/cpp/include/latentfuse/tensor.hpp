// Host tensors: the only data type that crosses the backend interface (mirrors runtime/backends/base.py,
// where everything crosses as host numpy arrays so the sampler arithmetic is backend-independent).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace latentfuse {

// Every user-facing failure: one line, the CLI prints "latentfuse-host: <what>" and exits 2.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType { Float32, Int64 };

std::string shape_str(const std::vector<int64_t>& shape);
int64_t numel(const std::vector<int64_t>& shape);

// A dense C-order host tensor, float32 or int64.
struct Tensor {
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  std::vector<float> f;    // used when dtype == Float32
  std::vector<int64_t> i;  // used when dtype == Int64

  static Tensor zeros(std::vector<int64_t> shape, DType dtype = DType::Float32);
  static Tensor from_float(std::vector<int64_t> shape, std::vector<float> data);
  static Tensor from_int64(std::vector<int64_t> shape, std::vector<int64_t> data);
  int64_t size() const { return numel(shape); }
  // Rows [begin, end) of the leading axis (a batch slice), copied.
  Tensor slice0(int64_t begin, int64_t end) const;
};

}  // namespace latentfuse
