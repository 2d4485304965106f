#include "latentfuse/tiling.hpp"

#include <algorithm>
#include <set>
#include <string>

namespace latentfuse {

std::vector<int> window_starts(int size, int window, int overlap, int step) {
  if (window >= size) return {0};
  const int stride = std::max(step, (window - overlap) / step * step);
  std::set<int> starts;
  for (int s = 0; s < size - window; s += stride) starts.insert(s);
  starts.insert(size - window);
  return {starts.begin(), starts.end()};
}

std::vector<float> ramp(int n, int overlap) {
  const float denom = static_cast<float>(std::max(overlap, 1) + 1);
  std::vector<float> out(n);
  for (int x = 0; x < n; ++x)
    out[x] = std::min(1.0f, std::min((static_cast<float>(x) + 1.0f) / denom, static_cast<float>(n - x) / denom));
  return out;
}

Tensor crop_hw(const Tensor& t, int y, int x, int h, int w) {
  const size_t nd = t.shape.size();
  if (nd < 2 || t.dtype != DType::Float32) throw Error("crop_hw needs a float32 tensor of at least 2 axes");
  const int64_t H = t.shape[nd - 2], W = t.shape[nd - 1];
  if (y < 0 || x < 0 || h < 1 || w < 1 || y + h > H || x + w > W)
    throw Error("window (" + std::to_string(y) + ", " + std::to_string(x) + ", " + std::to_string(h) + ", " +
                std::to_string(w) + ") does not fit " + shape_str(t.shape));
  std::vector<int64_t> shape = t.shape;
  shape[nd - 2] = h, shape[nd - 1] = w;
  const int64_t planes = numel(t.shape) / (H * W);
  std::vector<float> out;
  out.reserve(planes * h * w);
  for (int64_t p = 0; p < planes; ++p)
    for (int r = 0; r < h; ++r) {
      const auto row = t.f.begin() + p * H * W + (y + r) * W + x;
      out.insert(out.end(), row, row + w);
    }
  return Tensor::from_float(std::move(shape), std::move(out));
}

Tiler::Tiler(int max_h, int max_w, int overlap) {
  max_h_ = max_h / kTileGrid * kTileGrid;
  max_w_ = max_w / kTileGrid * kTileGrid;
  if (std::min(max_h_, max_w_) < 2 * kTileGrid)
    throw Error("tiling needs a maximum size of at least " + std::to_string(2 * kTileGrid) + " px, got " +
                std::to_string(max_w) + "x" + std::to_string(max_h));
  if (overlap < kTileGrid)
    throw Error("tile overlap must be at least " + std::to_string(kTileGrid) + " px, got " + std::to_string(overlap));
  // at most half a window, so every window advances by at least half its size
  overlap_ = std::min(overlap, std::min(max_h_, max_w_) / 2) / kTileGrid * kTileGrid;
}

Tensor Tiler::run(const std::vector<Tensor>& inputs, int in_unit, int out_unit, const Call& call) {
  if (inputs.empty()) throw Error("tiled call without inputs");
  const auto& s = inputs.front().shape;
  const int H = static_cast<int>(s.at(s.size() - 2)), W = static_cast<int>(s.at(s.size() - 1));
  const int th = max_h_ / in_unit, tw = max_w_ / in_unit, step = kTileGrid / in_unit, ov = overlap_ / in_unit;
  // window sizes and offsets in output elements: in * in_unit / out_unit
  auto out_len = [&](int v) { return in_unit >= out_unit ? v * (in_unit / out_unit) : v / (out_unit / in_unit); };
  const int out_overlap = overlap_ / out_unit;
  Tensor out, weight;
  int64_t planes = 0, OH = 0, OW = 0;
  for (int y : window_starts(H, th, ov, step))
    for (int x : window_starts(W, tw, ov, step)) {
      const int wh = std::min(th, H), ww = std::min(tw, W);
      std::vector<Tensor> crops;
      for (const auto& t : inputs) crops.push_back(crop_hw(t, y, x, wh, ww));
      ++calls_;
      const Tensor value = call(crops);
      const size_t nd = value.shape.size();
      const int oy = out_len(y), ox = out_len(x), oh = out_len(wh), ow = out_len(ww);
      if (nd < 2 || value.shape[nd - 2] != oh || value.shape[nd - 1] != ow)
        throw Error("a tiled call returned " + shape_str(value.shape) + " for a " + std::to_string(oh) + "x" +
                    std::to_string(ow) + " output window");
      if (out.shape.empty()) {
        std::vector<int64_t> shape = value.shape;
        OH = out_len(H), OW = out_len(W);
        shape[nd - 2] = OH, shape[nd - 1] = OW;
        out = Tensor::zeros(shape);
        weight = Tensor::zeros({OH, OW});
        planes = numel(shape) / (OH * OW);
      }
      const std::vector<float> ry = ramp(oh, out_overlap), rx = ramp(ow, out_overlap);
      for (int r = 0; r < oh; ++r)
        for (int c = 0; c < ow; ++c) {
          const float wgt = ry[r] * rx[c];
          const int64_t at = (oy + r) * OW + ox + c;
          for (int64_t p = 0; p < planes; ++p) out.f[p * OH * OW + at] += value.f[(p * oh + r) * ow + c] * wgt;
          weight.f[at] += wgt;
        }
    }
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t k = 0; k < OH * OW; ++k) out.f[p * OH * OW + k] /= weight.f[k];
  return out;
}

}  // namespace latentfuse
