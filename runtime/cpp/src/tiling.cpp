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

std::vector<Window> grid_windows(int h, int w, Size2 size, int overlap, int factor) {
  const int th = size.first / factor, tw = size.second / factor, step = kTileGrid / factor, ov = overlap / factor;
  std::vector<Window> out;
  for (int y : window_starts(h, th, ov, step))
    for (int x : window_starts(w, tw, ov, step)) out.push_back({y, x, std::min(th, h), std::min(tw, w)});
  return out;
}

int balanced_side(int size, int limit, int overlap) {
  if (size <= limit) return size;
  const int n = (size - overlap + (limit - overlap) - 1) / (limit - overlap);
  const int side = (size - overlap + n - 1) / n + overlap;
  return std::min(limit, (side + kTileGrid - 1) / kTileGrid * kTileGrid);
}

Blender::Blender(std::vector<int64_t> out_shape, int overlap) : overlap_(overlap) {
  const size_t nd = out_shape.size();
  if (nd < 2) throw Error("blend needs an output of at least 2 axes");
  out_ = Tensor::zeros(out_shape);
  weight_ = Tensor::zeros({out_shape[nd - 2], out_shape[nd - 1]});
}

void Blender::add(const Tensor& value, const Window& win, int row) {
  const std::vector<int64_t>& shape = out_.shape;
  const size_t nd = shape.size();
  const int64_t OH = shape[nd - 2], OW = shape[nd - 1], planes = numel(shape) / (OH * OW);
  std::vector<int64_t> expect = shape;
  expect[nd - 2] = win.h, expect[nd - 1] = win.w;
  int64_t first = 0, count = planes;  // the planes (batch rows x channels) this value covers
  if (row >= 0) {
    expect[0] = 1;
    count = planes / shape[0], first = row * count;
  }
  if (value.dtype != DType::Float32 || value.shape != expect)
    throw Error("a windowed call returned " + shape_str(value.shape) + " where " + shape_str(expect) + " was expected");
  if (win.y < 0 || win.x < 0 || win.y + win.h > OH || win.x + win.w > OW)
    throw Error("a window lies outside the blended output");
  const std::vector<float> ry = ramp(win.h, overlap_), rx = ramp(win.w, overlap_);
  for (int r = 0; r < win.h; ++r)
    for (int c = 0; c < win.w; ++c) {
      const float wgt = ry[r] * rx[c];
      const int64_t at = (win.y + r) * OW + win.x + c;
      for (int64_t p = 0; p < count; ++p) out_.f[(first + p) * OH * OW + at] += value.f[(p * win.h + r) * win.w + c] * wgt;
      if (row <= 0) weight_.f[at] += wgt;
    }
}

Tensor Blender::result() {
  const int64_t n = static_cast<int64_t>(weight_.f.size()), planes = static_cast<int64_t>(out_.f.size()) / n;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t k = 0; k < n; ++k) out_.f[p * n + k] /= weight_.f[k];
  weight_ = Tensor();
  return std::move(out_);
}

Tensor blend(const std::vector<Tensor>& values, std::vector<int64_t> out_shape, const std::vector<Window>& windows,
             int overlap) {
  if (values.size() != windows.size() || values.empty())
    throw Error("blend needs one output per window and an output of at least 2 axes");
  Blender blender(std::move(out_shape), overlap);
  for (size_t k = 0; k < values.size(); ++k) blender.add(values[k], windows[k]);
  return blender.result();
}

Tensor concat0(const std::vector<Tensor>& parts) {
  if (parts.empty()) throw Error("concat0 of no tensors");
  const Tensor& first = parts.front();
  if (first.shape.empty()) throw Error("concat0 needs tensors of at least one axis");
  std::vector<int64_t> shape = first.shape;
  shape[0] = 0;
  for (const auto& t : parts) {
    const bool same = t.dtype == first.dtype && t.shape.size() == first.shape.size() &&
                      std::equal(t.shape.begin() + 1, t.shape.end(), first.shape.begin() + 1);
    if (!same) throw Error("cannot stack " + shape_str(t.shape) + " on " + shape_str(first.shape));
    shape[0] += t.shape[0];
  }
  Tensor out;
  out.dtype = first.dtype;
  out.shape = shape;
  for (const auto& t : parts) {
    if (t.dtype == DType::Float32) out.f.insert(out.f.end(), t.f.begin(), t.f.end());
    else out.i.insert(out.i.end(), t.i.begin(), t.i.end());
  }
  return out;
}

namespace {

// runtime.backends.tiled._grid_size: rounded down to the grid, at least two grid cells per side
std::optional<Size2> grid_size(const std::optional<Size2>& size, const std::string& what) {
  if (!size) return std::nullopt;
  const int h = size->first / kTileGrid * kTileGrid, w = size->second / kTileGrid * kTileGrid;
  if (std::min(h, w) < 2 * kTileGrid)
    throw Error(what + " needs at least " + std::to_string(2 * kTileGrid) + " px per side, got " +
                std::to_string(size->second) + "x" + std::to_string(size->first) + " (W x H)");
  return Size2{h, w};
}

// runtime.backends.tiled._clamp_overlap: on the grid, at most half a window
int clamp_overlap(int overlap, const std::optional<Size2>& size, const std::string& what) {
  if (overlap < kTileGrid)
    throw Error(what + " overlap must be at least " + std::to_string(kTileGrid) + " px, got " + std::to_string(overlap));
  const int limit = size ? std::min(size->first, size->second) / 2 : overlap;
  return std::min(overlap, limit) / kTileGrid * kTileGrid;
}

}  // namespace

Tiler::Tiler(std::optional<Size2> window, std::optional<Size2> vae_tile, int overlap, int vae_overlap,
             std::optional<int> max_batch) {
  window_ = grid_size(window, "a DiT window");
  vae_tile_ = grid_size(vae_tile, "a VAE tile");
  overlap_ = clamp_overlap(overlap, window_, "window");
  vae_overlap_ = clamp_overlap(vae_overlap, vae_tile_, "VAE tile");
  if (max_batch && *max_batch < 1)
    throw Error("the DiT batch per call must be at least 1, got " + std::to_string(*max_batch));
  max_batch_ = max_batch;
}

std::optional<Size2> Tiler::vae_tile_size(int h, int w) const {
  if (!vae_tile_ || (h <= vae_tile_->first && w <= vae_tile_->second)) return std::nullopt;
  return Size2{balanced_side(h, vae_tile_->first, vae_overlap_), balanced_side(w, vae_tile_->second, vae_overlap_)};
}

std::optional<std::vector<Window>> Tiler::vae_tiles(int h, int w, int factor) const {
  const auto size = vae_tile_size(h * factor, w * factor);
  if (!size) return std::nullopt;
  return grid_windows(h, w, *size, vae_overlap_, factor);
}

// A tiled image goes through the VAE one image and one tile per call, each output blended in as it comes.
Tensor Tiler::encode(const Tensor& images, const VaeCall& encoder) {
  if (images.shape.size() != 4) throw Error("the VAE encoder takes [B, C, H, W] images, got " + shape_str(images.shape));
  const auto tiles = vae_tiles(static_cast<int>(images.shape[2]), static_cast<int>(images.shape[3]), 1);
  if (!tiles) {
    ++calls_;
    return encoder(images);
  }
  return vae_over_tiles(images, *tiles, encoder, 1, kLatentFactor, vae_overlap_ / kLatentFactor);
}

Tensor Tiler::decode(const Tensor& latents, const VaeCall& decoder) {
  if (latents.shape.size() != 4) throw Error("the VAE decoder takes [B, z, h, w] latents, got " + shape_str(latents.shape));
  const auto tiles = vae_tiles(static_cast<int>(latents.shape[2]), static_cast<int>(latents.shape[3]), kLatentFactor);
  if (!tiles) {
    ++calls_;
    return decoder(latents);
  }
  return vae_over_tiles(latents, *tiles, decoder, kLatentFactor, 1, vae_overlap_);
}

Tensor Tiler::vae_over_tiles(const Tensor& x, const std::vector<Window>& tiles, const VaeCall& call, int num, int den,
                             int out_overlap) {
  const int B = static_cast<int>(x.shape[0]), H = static_cast<int>(x.shape[2]), W = static_cast<int>(x.shape[3]);
  const auto out = [&](int v) { return v * num / den; };
  std::optional<Blender> blender;
  for (const auto& t : tiles)
    for (int row = 0; row < B; ++row) {
      ++calls_;
      const Tensor y = call(crop_hw(x, t.y, t.x, t.h, t.w).slice0(row, row + 1));
      if (!blender) blender.emplace(std::vector<int64_t>{B, y.shape.at(1), out(H), out(W)}, out_overlap);
      blender->add(y, {out(t.y), out(t.x), out(t.h), out(t.w)}, row);
    }
  return blender->result();
}

std::vector<Window> Tiler::dit_windows(int h, int w) const {
  if (!window_) return {Window{0, 0, h, w}};
  return grid_windows(h, w, *window_, overlap_, kLatentFactor);
}

Tensor Tiler::dit(const std::vector<Tensor>& spatial, const std::vector<Tensor>& shared, const DitCall& call) {
  if (spatial.empty() || spatial.front().shape.size() != 4) throw Error("a windowed DiT call needs [B, C, h, w] latents");
  const Tensor& ref = spatial.front();
  const int64_t rows = ref.shape[0];
  const int h = static_cast<int>(ref.shape[2]), w = static_cast<int>(ref.shape[3]);
  const std::vector<Window> windows = dit_windows(h, w);
  if (windows.size() == 1 && windows.front() == Window{0, 0, h, w}) {
    ++calls_;
    return call(spatial, shared);
  }
  // every window has the same size (grid_windows), so a chunk of them is one batched call; each chunk's
  // outputs are blended in as they come
  const size_t per_call =
      max_batch_ ? static_cast<size_t>(std::max<int64_t>(1, *max_batch_ / rows)) : windows.size();
  Blender blender({ref.shape[0], ref.shape[1], h, w}, overlap_ / kLatentFactor);
  for (size_t start = 0; start < windows.size(); start += per_call) {
    const size_t end = std::min(windows.size(), start + per_call), n = end - start;
    std::vector<Tensor> feeds, rows_shared;
    for (const auto& s : spatial) {
      std::vector<Tensor> crops;
      for (size_t k = start; k < end; ++k) crops.push_back(crop_hw(s, windows[k].y, windows[k].x, windows[k].h, windows[k].w));
      feeds.push_back(concat0(crops));
    }
    for (const auto& s : shared) rows_shared.push_back(concat0(std::vector<Tensor>(n, s)));
    ++calls_;
    const Tensor out = call(feeds, rows_shared);
    if (out.shape.empty() || out.shape[0] != rows * static_cast<int64_t>(n))
      throw Error("a batched DiT call on " + std::to_string(n) + " windows of " + std::to_string(rows) +
                  " row(s) returned " + shape_str(out.shape));
    for (size_t k = 0; k < n; ++k) blender.add(out.slice0(k * rows, (k + 1) * rows), windows[start + k]);
  }
  return blender.result();
}

std::vector<Strip> fidelity_strips(int height, int rows, int halo) {
  if (rows < kTileGrid || rows % kTileGrid || halo < 0 || halo % kTileGrid || height % kTileGrid)
    throw Error("fidelity strips need rows and a halo on the " + std::to_string(kTileGrid) + "-px grid, got " +
                std::to_string(rows) + " rows, halo " + std::to_string(halo) + ", image height " + std::to_string(height));
  if (rows >= height) return {{0, height, 0, height}};
  const int n = (height + rows - 1) / rows;
  const int even = (height + n - 1) / n, step = (even + kTileGrid - 1) / kTileGrid * kTileGrid;
  std::vector<Strip> out;
  for (int y0 = 0; y0 < height; y0 += step) {
    const int y1 = std::min(height, y0 + step);
    int c0 = std::max(0, y0 - halo), c1 = std::min(height, y1 + halo);
    if (c1 - c0 < std::min(height, 2 * kTileGrid)) {  // the graphs' smallest side: more context, same rows
      c0 = std::max(0, c1 - 2 * kTileGrid);
      c1 = std::min(height, c0 + 2 * kTileGrid);
    }
    out.push_back({y0, y1, c0, c1});
  }
  return out;
}

Tensor fidelity_over_strips(const Tensor& image, const Tensor& a, const Tensor& b, int rows, int halo,
                            const FidelityCall& call, int* calls) {
  const size_t nd = image.shape.size();
  const int H = static_cast<int>(image.shape.at(nd - 2)), W = static_cast<int>(image.shape.at(nd - 1));
  if (rows <= 0 || rows >= H) {
    if (calls) ++*calls;
    return call(image, a, b);
  }
  Tensor out = Tensor::zeros(image.shape);
  const int64_t planes = numel(image.shape) / (int64_t{H} * W);
  for (const Strip& s : fidelity_strips(H, rows, halo)) {
    if (calls) ++*calls;
    const int ch = s.c1 - s.c0;
    const Tensor part = call(crop_hw(image, s.c0, 0, ch, W), crop_hw(a, s.c0, 0, ch, W), crop_hw(b, s.c0, 0, ch, W));
    if (part.dtype != DType::Float32 || numel(part.shape) != planes * ch * W)
      throw Error("the fidelity graph returned " + shape_str(part.shape) + " for a strip of " + std::to_string(ch) + " rows");
    for (int64_t p = 0; p < planes; ++p)
      std::copy(part.f.begin() + p * ch * W + int64_t{s.y0 - s.c0} * W, part.f.begin() + p * ch * W + int64_t{s.y1 - s.c0} * W,
                out.f.begin() + p * H * W + int64_t{s.y0} * W);
  }
  return out;
}

}  // namespace latentfuse
