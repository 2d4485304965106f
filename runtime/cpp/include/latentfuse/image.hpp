// Image I/O and the pre/post-processing of runtime/pipeline.py: 8/16-bit PNG and JPEG read (stb_image),
// PNG (8/16-bit) and JPEG write, the working-scale resampling, reflect padding to a multiple of 16 and
// the crop back.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "latentfuse/tensor.hpp"

namespace latentfuse {

// HxWxC float32 in [0, 1], C = 1 (gray) or 3 (RGB), row-major, channels last.
struct Image {
  int height = 0, width = 0, channels = 0;
  std::vector<float> px;
  float& at(int y, int x, int c) { return px[(static_cast<size_t>(y) * width + x) * channels + c]; }
  float at(int y, int x, int c) const { return px[(static_cast<size_t>(y) * width + x) * channels + c]; }
};

// PNG (8/16-bit, gray / gray+alpha / RGB / RGBA) or JPEG -> [0, 1] (x / peak in float64, as
// model.image_io.read_image); alpha dropped, one channel kept gray.
Image read_image(const std::filesystem::path& path);

// Writes a [0, 1] image (round(clip(x) * peak), half-to-even): .png at 8 or 16 bits, .jpg/.jpeg at 8
// (quality 95). Written to a temporary name and renamed.
void write_image(const std::filesystem::path& path, const Image& img, int bit_depth = 8);

// Gray -> RGB by repetition (the VAE takes 3 channels).
Image to_rgb(const Image& img);

// ITU-R BT.601 luma of an RGB image.
Image to_gray(const Image& img);

// model.work_scale.upscale: k-times bicubic enlargement (Keys a = -0.75, half-pixel centres, edge clamp),
// clipped to [0, 1]; k = 1 returns the image.
Image upscale(const Image& img, int k);

// model.work_scale.downscale: the mean of each k x k block; height and width must divide by k.
Image downscale(const Image& img, int k);

// side rounded up to a multiple of `multiple` and to at least `minimum` (runtime.pipeline._padded).
int padded_side(int side, int minimum, int multiple = 16);

// numpy.pad(mode="reflect") at the bottom / right to height x width ("edge" when a side is 1 px).
Image pad_to_size(const Image& img, int height, int width);

// Top-left height x width crop.
Image crop(const Image& img, int height, int width);

// HxWx3 [0, 1] images -> [B, 3, H, W] in [-1, 1].
Tensor to_model_range(const std::vector<Image>& imgs);

// Item 0 of [B, 3, H', W'] in about [-1, 1] -> HxWx3 [0, 1] cropped to height x width.
Image from_model_range(const Tensor& batch, int height, int width);

}  // namespace latentfuse
