#include "latentfuse/image.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace latentfuse {

namespace fs = std::filesystem;

namespace {

std::string lower_suffix(const fs::path& path) {
  std::string s = path.extension().string();
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// numpy "reflect" index for i in [0, n + pad): mirror without repeating the edge, periodic beyond.
int reflect_index(int i, int n) {
  if (n == 1) return 0;  // edge
  const int period = 2 * (n - 1);
  int m = i % period;
  return m < n ? m : period - m;
}

uint32_t crc32(const unsigned char* data, size_t len, uint32_t crc = 0) {
  // PNG spec (ISO 15948) annex D CRC-32, bitwise; images here are small.
  crc = ~crc;
  for (size_t k = 0; k < len; ++k) {
    crc ^= data[k];
    for (int b = 0; b < 8; ++b) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put_be32(std::vector<unsigned char>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(v >> s));
}

void png_chunk(std::ofstream& out, const char* type, const std::vector<unsigned char>& data) {
  std::vector<unsigned char> buf;
  put_be32(buf, static_cast<uint32_t>(data.size()));
  buf.insert(buf.end(), type, type + 4);
  buf.insert(buf.end(), data.begin(), data.end());
  const uint32_t crc = crc32(buf.data() + 4, buf.size() - 4);
  put_be32(buf, crc);
  out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
}

// stb_image_write has no 16-bit PNG writer: raw scanlines (filter 0, big-endian samples) deflated
// with stb's zlib compressor, framed as IHDR / IDAT / IEND.
bool write_png16(const fs::path& path, int w, int h, int c, const std::vector<uint16_t>& data) {
  std::vector<unsigned char> raw;
  raw.reserve(static_cast<size_t>(h) * (1 + 2 * w * c));
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    for (int k = 0; k < w * c; ++k) {
      const uint16_t v = data[static_cast<size_t>(y) * w * c + k];
      raw.push_back(static_cast<unsigned char>(v >> 8));
      raw.push_back(static_cast<unsigned char>(v & 0xFF));
    }
  }
  int zlen = 0;
  unsigned char* z = stbi_zlib_compress(raw.data(), static_cast<int>(raw.size()), &zlen, 8);
  if (!z) return false;
  std::vector<unsigned char> idat(z, z + zlen);
  STBIW_FREE(z);
  std::ofstream out(path, std::ios::binary);
  const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  out.write(reinterpret_cast<const char*>(sig), 8);
  std::vector<unsigned char> ihdr;
  put_be32(ihdr, static_cast<uint32_t>(w));
  put_be32(ihdr, static_cast<uint32_t>(h));
  ihdr.insert(ihdr.end(), {16, static_cast<unsigned char>(c == 3 ? 2 : 0), 0, 0, 0});
  png_chunk(out, "IHDR", ihdr);
  png_chunk(out, "IDAT", idat);
  png_chunk(out, "IEND", {});
  return static_cast<bool>(out);
}

}  // namespace

Image read_image(const fs::path& path) {
  if (!fs::is_regular_file(path)) throw Error("image not found: " + path.string());
  const std::string s = path.string();
  int w = 0, h = 0, n = 0;
  const bool sixteen = stbi_is_16_bit(s.c_str());
  void* data = sixteen ? static_cast<void*>(stbi_load_16(s.c_str(), &w, &h, &n, 0))
                       : static_cast<void*>(stbi_load(s.c_str(), &w, &h, &n, 0));
  if (!data) throw Error("cannot read image " + s + ": " + stbi_failure_reason() + " (PNG and JPEG are supported)");
  Image img;
  img.height = h;
  img.width = w;
  img.channels = n >= 3 ? 3 : 1;  // RGBA -> RGB, gray+alpha -> gray
  img.px.resize(static_cast<size_t>(h) * w * img.channels);
  const double peak = sixteen ? 65535.0 : 255.0;
  for (size_t p = 0; p < static_cast<size_t>(h) * w; ++p)
    for (int c = 0; c < img.channels; ++c) {
      const size_t src = p * n + c;
      const double v = sixteen ? static_cast<const uint16_t*>(data)[src] : static_cast<const uint8_t*>(data)[src];
      img.px[p * img.channels + c] = static_cast<float>(v / peak);
    }
  stbi_image_free(data);
  return img;
}

void write_image(const fs::path& path, const Image& img, int bit_depth) {
  const std::string suffix = lower_suffix(path);
  const bool jpeg = suffix == ".jpg" || suffix == ".jpeg";
  if (suffix != ".png" && !jpeg) throw Error("cannot write " + path.string() + ": use a .png, .jpg or .jpeg name");
  if (bit_depth != 8 && bit_depth != 16) throw Error("cannot write " + path.string() + ": bit depth must be 8 or 16");
  if (jpeg && bit_depth != 8) throw Error("cannot write " + path.string() + ": JPEG supports 8-bit only");
  const double peak = bit_depth == 8 ? 255.0 : 65535.0;
  std::vector<uint16_t> q(img.px.size());
  for (size_t k = 0; k < q.size(); ++k) {
    const double v = static_cast<double>(img.px[k]);
    if (!std::isfinite(v)) throw Error("cannot write " + path.string() + ": image contains NaN or Inf values");
    q[k] = static_cast<uint16_t>(std::nearbyint(std::clamp(v, 0.0, 1.0) * peak));  // half-to-even, as np.round
  }
  const fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".tmp" + suffix);
  bool ok;
  if (bit_depth == 16) {
    ok = write_png16(tmp, img.width, img.height, img.channels, q);
  } else {
    std::vector<unsigned char> b(q.begin(), q.end());
    ok = jpeg ? stbi_write_jpg(tmp.string().c_str(), img.width, img.height, img.channels, b.data(), 95)
              : stbi_write_png(tmp.string().c_str(), img.width, img.height, img.channels, b.data(),
                               img.width * img.channels);
  }
  if (!ok) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw Error("cannot write " + path.string());
  }
  fs::rename(tmp, path);
}

Image to_rgb(const Image& img) {
  if (img.channels == 3) return img;
  Image out{img.height, img.width, 3, std::vector<float>(img.px.size() * 3)};
  for (size_t p = 0; p < img.px.size(); ++p) out.px[3 * p] = out.px[3 * p + 1] = out.px[3 * p + 2] = img.px[p];
  return out;
}

Image to_gray(const Image& img) {
  if (img.channels == 1) return img;
  Image out{img.height, img.width, 1, std::vector<float>(img.px.size() / 3)};
  // numpy: img @ float32 weights, accumulated in float32 in channel order
  for (size_t p = 0; p < out.px.size(); ++p)
    out.px[p] = img.px[3 * p] * 0.299f + img.px[3 * p + 1] * 0.587f + img.px[3 * p + 2] * 0.114f;
  return out;
}

namespace {

// Source rows (clamped) and float32 weights of a k-times bicubic enlargement of n samples, 4 taps per
// output sample, computed in double and rounded as model.work_scale._cubic_taps does.
void cubic_taps(int n, int k, std::vector<int>& index, std::vector<float>& weight) {
  constexpr double A = -0.75;
  auto near = [](double t) { return ((A + 2) * t - (A + 3)) * t * t + 1; };       // |x| <= 1
  auto far = [](double t) { return ((A * t - 5 * A) * t + 8 * A) * t - 4 * A; };  // 1 < |x| < 2
  index.resize(static_cast<size_t>(n) * k * 4);
  weight.resize(index.size());
  for (int o = 0; o < n * k; ++o) {
    const double src = (o + 0.5) / k - 0.5, base = std::floor(src), t = src - base;
    const double w[4] = {far(t + 1), near(t), near(1 - t), far(2 - t)};
    for (int j = 0; j < 4; ++j) {
      index[4 * o + j] = std::clamp(static_cast<int>(base) - 1 + j, 0, n - 1);
      weight[4 * o + j] = static_cast<float>(w[j]);
    }
  }
}

}  // namespace

Image upscale(const Image& img, int k) {
  if (k < 1) throw Error("upscale factor must be >= 1, got " + std::to_string(k));
  if (k == 1) return img;
  std::vector<int> ri, ci;
  std::vector<float> rw, cw;
  cubic_taps(img.height, k, ri, rw);
  cubic_taps(img.width, k, ci, cw);
  const int C = img.channels, H = img.height * k, W = img.width * k;
  Image tall{H, img.width, C, std::vector<float>(static_cast<size_t>(H) * img.width * C)};
  for (int y = 0; y < H; ++y)  // rows first, taps summed in order, as the numpy reference
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (int j = 0; j < 4; ++j) acc += img.at(ri[4 * y + j], x, c) * rw[4 * y + j];
        tall.at(y, x, c) = acc;
      }
  Image out{H, W, C, std::vector<float>(static_cast<size_t>(H) * W * C)};
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (int j = 0; j < 4; ++j) acc += tall.at(y, ci[4 * x + j], c) * cw[4 * x + j];
        out.at(y, x, c) = std::clamp(acc, 0.0f, 1.0f);
      }
  return out;
}

Image downscale(const Image& img, int k) {
  if (k < 1) throw Error("downscale factor must be >= 1, got " + std::to_string(k));
  if (k == 1) return img;
  if (img.height % k || img.width % k)
    throw Error("downscale: a " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                " image does not divide by the factor " + std::to_string(k));
  const int C = img.channels, H = img.height / k, W = img.width / k;
  Image out{H, W, C, std::vector<float>(static_cast<size_t>(H) * W * C)};
  const float count = static_cast<float>(k * k);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x)
      for (int c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (int dy = 0; dy < k; ++dy)
          for (int dx = 0; dx < k; ++dx) acc += img.at(k * y + dy, k * x + dx, c);
        out.at(y, x, c) = acc / count;
      }
  return out;
}

int padded_side(int side, int minimum, int multiple) {
  auto up = [multiple](int v) { return v + ((multiple - v % multiple) % multiple); };
  return std::max(up(side), up(minimum));
}

Image pad_to_size(const Image& img, int height, int width) {
  if (height < img.height || width < img.width)
    throw Error("cannot pad a " + std::to_string(img.width) + "x" + std::to_string(img.height) + " image down to " +
                std::to_string(width) + "x" + std::to_string(height));
  Image out{height, width, img.channels, std::vector<float>(static_cast<size_t>(height) * width * img.channels)};
  const bool edge = std::min(img.height, img.width) <= 1;
  for (int y = 0; y < height; ++y) {
    const int sy = y < img.height ? y : edge ? img.height - 1 : reflect_index(y, img.height);
    for (int x = 0; x < width; ++x) {
      const int sx = x < img.width ? x : edge ? img.width - 1 : reflect_index(x, img.width);
      for (int c = 0; c < img.channels; ++c) out.at(y, x, c) = img.at(sy, sx, c);
    }
  }
  return out;
}

Image crop(const Image& img, int height, int width) {
  Image out{height, width, img.channels, std::vector<float>(static_cast<size_t>(height) * width * img.channels)};
  for (int y = 0; y < height; ++y)
    std::memcpy(&out.at(y, 0, 0), img.px.data() + static_cast<size_t>(y) * img.width * img.channels, sizeof(float) * width * img.channels);
  return out;
}

Tensor to_model_range(const std::vector<Image>& imgs) {
  const int h = imgs.at(0).height, w = imgs.at(0).width;
  Tensor t = Tensor::zeros({static_cast<int64_t>(imgs.size()), 3, h, w});
  for (size_t b = 0; b < imgs.size(); ++b)
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
          t.f[((b * 3 + c) * h + y) * w + x] = imgs[b].at(y, x, c) * 2.0f - 1.0f;
  return t;
}

Image from_model_range(const Tensor& batch, int height, int width) {
  const int64_t H = batch.shape.at(2), W = batch.shape.at(3);
  Image out{height, width, 3, std::vector<float>(static_cast<size_t>(height) * width * 3)};
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x)
        out.at(y, x, c) = std::clamp((batch.f[(c * H + y) * W + x] + 1.0f) * 0.5f, 0.0f, 1.0f);
  return out;
}

}  // namespace latentfuse
