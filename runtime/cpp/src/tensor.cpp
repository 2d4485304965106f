#include "latentfuse/tensor.hpp"

#include <sstream>

namespace latentfuse {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t k = 0; k < shape.size(); ++k) out << (k ? ", " : "") << shape[k];
  out << "]";
  return out.str();
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  if (dtype == DType::Float32) t.f.assign(numel(t.shape), 0.0f);
  else t.i.assign(numel(t.shape), 0);
  return t;
}

Tensor Tensor::from_float(std::vector<int64_t> shape, std::vector<float> data) {
  if (numel(shape) != static_cast<int64_t>(data.size()))
    throw Error("tensor data of " + std::to_string(data.size()) + " values does not fill shape " + shape_str(shape));
  Tensor t;
  t.shape = std::move(shape);
  t.f = std::move(data);
  return t;
}

Tensor Tensor::from_int64(std::vector<int64_t> shape, std::vector<int64_t> data) {
  if (numel(shape) != static_cast<int64_t>(data.size()))
    throw Error("tensor data of " + std::to_string(data.size()) + " values does not fill shape " + shape_str(shape));
  Tensor t;
  t.dtype = DType::Int64;
  t.shape = std::move(shape);
  t.i = std::move(data);
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  if (shape.empty() || begin < 0 || end > shape[0] || begin >= end)
    throw Error("bad batch slice [" + std::to_string(begin) + ", " + std::to_string(end) + ") of " + shape_str(shape));
  Tensor out;
  out.dtype = dtype;
  out.shape = shape;
  out.shape[0] = end - begin;
  const int64_t row = numel(shape) / shape[0];
  if (dtype == DType::Float32) out.f.assign(f.begin() + begin * row, f.begin() + end * row);
  else out.i.assign(i.begin() + begin * row, i.begin() + end * row);
  return out;
}

}  // namespace latentfuse
