// Tiled processing for a model that runs on windows (manifest latent.window): the twin of
// runtime/backends/tiled.py. Every graph call on a large input becomes calls on overlapping windows,
// blended with weights that ramp linearly over the overlap. The DiT is blended per call (the velocity at
// every sampler step: MultiDiffusion's rule), so the windows agree on one latent trajectory.
#pragma once

#include <functional>
#include <vector>

#include "latentfuse/tensor.hpp"

namespace latentfuse {

constexpr int kTileGrid = 16;      // pixels per DiT patch (8 x 2): window starts and sizes are multiples
constexpr int kLatentFactor = 8;   // VAE downsampling

// Start offsets of windows of `window` covering [0, size) with at least `overlap` shared, every start a
// multiple of `step` and the last window flush with the end (runtime.backends.tiled.window_starts).
std::vector<int> window_starts(int size, int window, int overlap, int step);

// 1-D feathering weights: a linear rise over `overlap` samples at both ends, 1 inside, never 0.
std::vector<float> ramp(int n, int overlap);

// Rows y..y+h, columns x..x+w of the last two axes of a float32 tensor (N-D, N >= 2), copied.
Tensor crop_hw(const Tensor& t, int y, int x, int h, int w);

class Tiler {
 public:
  // Windows of at most max_h x max_w pixels (rounded down to the grid) sharing `overlap` pixels
  // (at most half a window, on the grid), as runtime.backends.tiled.TiledBackend picks them.
  Tiler(int max_h, int max_w, int overlap = 64);

  using Call = std::function<Tensor(const std::vector<Tensor>& windows)>;
  // Runs `call` on the same window of every input and blends its outputs into one tensor. `in_unit` /
  // `out_unit`: pixels per element of the inputs' / output's last two axes (1: images, 8: latents),
  // so the VAE encoder is (1, 8), the DiT (8, 8) and the VAE decoder (8, 1).
  Tensor run(const std::vector<Tensor>& inputs, int in_unit, int out_unit, const Call& call);

  int max_height() const { return max_h_; }
  int max_width() const { return max_w_; }
  int overlap() const { return overlap_; }
  int calls() const { return calls_; }  // network calls made on windows

 private:
  int max_h_, max_w_, overlap_, calls_ = 0;
};

}  // namespace latentfuse
