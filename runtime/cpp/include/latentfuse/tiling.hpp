// Windows and tiles: the twin of runtime/backends/tiled.py (TiledBackend). The two kinds of work are
// split differently:
// * DiT (velocity / regression): the model's window (manifest latent.window) or a graph's size limit,
//   in latent space. Every call cuts Z_t, Z_a, Z_b into overlapping latent windows, stacks them
//   window-major along the batch and runs them through the graph as one batch (or chunks of at most
//   max_batch rows), prompt embeddings / mask / t repeated per window, and blends the outputs with
//   weights that ramp linearly over the overlap. The velocity is blended at every sampler call
//   (MultiDiffusion's rule), so the windows agree on one latent trajectory.
// * VAE: each image is encoded once and the result decoded once; only an image over the VAE tile bound
//   is split, into the fewest tiles within the bound spread evenly (balanced_side) overlapping by
//   vae_overlap, one image and one tile per call, encoder tiles blended in latent space, decoder tiles
//   in pixel space.
// Every output (VAE tiles, chunks of DiT windows) is blended into the result as it comes (Blender), so a
// call's memory is bounded by its tile or chunk, not by the image (runtime.backends.tiled).
#pragma once

#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "latentfuse/tensor.hpp"

namespace latentfuse {

// runtime/backends/tiled.py: LATENT_FACTOR, GRID, VAE_OVERLAP
constexpr int kTileGrid = 16;      // pixels per DiT patch (8 x 2): window starts and sizes are multiples
constexpr int kLatentFactor = 8;   // VAE downsampling
constexpr int kVaeOverlap = 64;    // pixels shared by neighbouring VAE tiles (runtime/backends/tiled.py VAE_OVERLAP)
constexpr int kDitOverlap = 32;    // pixels shared by neighbouring DiT windows (runtime/backends/tiled.py DIT_OVERLAP)

// (height, width) in pixels
using Size2 = std::pair<int, int>;

// A window (y, x, h, w) in the units of the tensor it cuts (pixels or latents).
struct Window {
  int y = 0, x = 0, h = 0, w = 0;
  bool operator==(const Window& o) const { return y == o.y && x == o.x && h == o.h && w == o.w; }
};

// Start offsets of windows of `window` covering [0, size) with at least `overlap` shared, every start a
// multiple of `step` and the last window flush with the end (runtime.backends.tiled.window_starts).
std::vector<int> window_starts(int size, int window, int overlap, int step);

// 1-D feathering weights: a linear rise over `overlap` samples at both ends, 1 inside, never 0.
std::vector<float> ramp(int n, int overlap);

// Windows of at most `size` pixels over an h x w extent in units of 1/`factor` pixels (1: pixels,
// 8: latents), overlapping by `overlap` pixels, starts on the 16-px grid (tiled.grid_windows).
std::vector<Window> grid_windows(int h, int w, Size2 size, int overlap, int factor);

// The tile side, on the 16-px grid and at most `limit`, that covers `size` px with the fewest tiles
// overlapping by `overlap`, spread evenly (runtime.backends.tiled.balanced_side); `size` when it fits.
int balanced_side(int size, int limit, int overlap);

// A weighted average built in place (tiled.Blender): add() each window's output as it comes, feathered by
// ramp(h, overlap) x ramp(w, overlap), result() divides once by the weights' sum per element. `row` >= 0:
// the value is that batch row only (its weights counted once per window, with row 0).
class Blender {
 public:
  Blender(std::vector<int64_t> out_shape, int overlap);
  void add(const Tensor& value, const Window& win, int row = -1);
  Tensor result();

 private:
  Tensor out_, weight_;
  int overlap_;
};

// Weighted average of values[i] (outputs on windows[i]) into out_shape (tiled.blend), through a Blender.
Tensor blend(const std::vector<Tensor>& values, std::vector<int64_t> out_shape, const std::vector<Window>& windows,
             int overlap);

// Rows y..y+h, columns x..x+w of the last two axes of a float32 tensor (N-D, N >= 2), copied.
Tensor crop_hw(const Tensor& t, int y, int x, int h, int w);

// Tensors (float32 or int64, equal trailing shape) stacked along the leading axis (numpy.concatenate).
Tensor concat0(const std::vector<Tensor>& parts);

class Tiler {
 public:
  // DiT calls in batched windows of `window` (H, W) pixels, at most `max_batch` rows per call (nullopt:
  // all windows in one), VAE calls split into tiles of `vae_tile` pixels only where an image exceeds it
  // (nullopt: never). Sizes are rounded down to the 16-px grid (at least 32 px); overlaps (at least
  // 16 px) are clamped to half a window / tile, on the grid (TiledBackend.__init__).
  Tiler(std::optional<Size2> window, std::optional<Size2> vae_tile = std::nullopt, int overlap = kDitOverlap,
        int vae_overlap = kVaeOverlap, std::optional<int> max_batch = std::nullopt);

  using VaeCall = std::function<Tensor(const Tensor& x)>;
  // images [B, C, H, W] -> latents [B, z, H/8, W/8]: whole, or tiles blended in latent space
  Tensor encode(const Tensor& images, const VaeCall& encoder);
  // latents [B, z, h, w] -> images [B, C, 8h, 8w]: whole, or tiles blended in pixel space
  Tensor decode(const Tensor& latents, const VaeCall& decoder);

  // `call(spatial windows, shared rows)` on every window, batched, outputs blended (TiledBackend._dit).
  // `spatial` tensors [B, C, h, w] (z_a, z_b, z_t) are cut into windows stacked window-major along the
  // batch; `shared` tensors (prompt embeddings, mask, t: B rows each) are repeated once per window.
  using DitCall = std::function<Tensor(const std::vector<Tensor>& spatial, const std::vector<Tensor>& shared)>;
  Tensor dit(const std::vector<Tensor>& spatial, const std::vector<Tensor>& shared, const DitCall& call);

  // The latent windows of an h x w latent (one window, the whole latent, when it fits).
  std::vector<Window> dit_windows(int h, int w) const;
  // Tiles (in units of 1/factor px) of an image over the VAE limit, nullopt when it fits.
  std::optional<std::vector<Window>> vae_tiles(int h, int w, int factor) const;
  // The tile (H, W) px of an h x w px image over the VAE limit (balanced_side per axis), nullopt when it fits.
  std::optional<Size2> vae_tile_size(int h, int w) const;

  const std::optional<Size2>& window() const { return window_; }
  const std::optional<Size2>& vae_tile() const { return vae_tile_; }
  int overlap() const { return overlap_; }
  int vae_overlap() const { return vae_overlap_; }
  const std::optional<int>& max_batch() const { return max_batch_; }
  int calls() const { return calls_; }  // network calls made (VAE and DiT)

 private:
  // `call` on every tile of every image of x, one per call, each output blended in as it comes; a coordinate
  // v of x is v * num / den in the output (encoder 1/8, decoder 8/1), the output overlap is out_overlap.
  Tensor vae_over_tiles(const Tensor& x, const std::vector<Window>& tiles, const VaeCall& call, int num, int den,
                        int out_overlap);

  std::optional<Size2> window_, vae_tile_;
  int overlap_ = 0, vae_overlap_ = 0;
  std::optional<int> max_batch_;
  int calls_ = 0;
};

// The fidelity decoder (model.fidelity) in strips of rows (runtime.backends.tiled.fidelity_strips): strips of
// at most `rows` rows spread evenly on the 16-px grid, each {y0, y1, c0, c1}: its own rows [y0, y1) and the
// rows [c0, c1) its call reads (`halo` more each side within the image, at least kMinSide rows).
struct Strip {
  int y0, y1, c0, c1;
};
std::vector<Strip> fidelity_strips(int height, int rows, int halo);
// `call(image, source_a, source_b)` ([B, 3, H, W] each) on every strip, each strip's own rows copied into the
// result (TiledBackend.fidelity): equal to one whole-image call. `rows` 0: one whole call. `calls` counts them.
using FidelityCall = std::function<Tensor(const Tensor& image, const Tensor& a, const Tensor& b)>;
Tensor fidelity_over_strips(const Tensor& image, const Tensor& a, const Tensor& b, int rows, int halo,
                            const FidelityCall& call, int* calls = nullptr);

}  // namespace latentfuse
