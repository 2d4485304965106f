// Windows and tiles against runtime/backends/tiled.py and runtime/pipeline.py (tests/vectors/tiling.json):
// window starts and feathering weights exactly; whole calls of the four graph kinds through a Tiler (DiT
// windows batched whole, chunked and one per call, the VAE whole or in tiles) over the same stand-in
// graphs as make_vectors.py's WindowMeanBackend (each output row shifted by its own window's mean, so a
// wrong window, batch order, unit conversion or blend weight changes the numbers) within 1e-5, with the
// same number of calls and rows per DiT call; plan_windows (DiT window, VAE tile), the even VAE tiles
// (balanced_side) and the memory plan (plan_memory: VAE tile, DiT windows per call, detail strips, the
// estimated peak, or the same error) exactly.
#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "check.hpp"
#include "latentfuse/pipeline.hpp"
#include "latentfuse/tiling.hpp"

using namespace latentfuse;

// the mean of each batch row (numpy x.mean(axis=(1, 2, 3)), float64 accumulation like numpy's pairwise float32
// sum closely enough for 1e-5)
static std::vector<float> row_means(const Tensor& t) {
  const int64_t rows = t.shape.at(0), n = numel(t.shape) / rows;
  std::vector<float> out(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t k = 0; k < n; ++k) sum += t.f[r * n + k];
    out[r] = static_cast<float>(sum / static_cast<double>(n));
  }
  return out;
}

// WindowMeanBackend's graphs
static Tensor encode(const Tensor& x) {  // 8x8 box mean + the row's window mean
  const int64_t B = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], h = H / 8, w = W / 8;
  Tensor out = Tensor::zeros({B, C, h, w});
  const auto m = row_means(x);
  for (int64_t p = 0; p < B * C; ++p)
    for (int64_t r = 0; r < h; ++r)
      for (int64_t c = 0; c < w; ++c) {
        double sum = 0;
        for (int dy = 0; dy < 8; ++dy)
          for (int dx = 0; dx < 8; ++dx) sum += x.f[(p * H + r * 8 + dy) * W + c * 8 + dx];
        out.f[(p * h + r) * w + c] = static_cast<float>(sum / 64.0) + m[p / C];
      }
  return out;
}

static Tensor decode(const Tensor& z) {  // 8x nearest-neighbour enlargement - the row's window mean
  const int64_t B = z.shape[0], C = z.shape[1], h = z.shape[2], w = z.shape[3], H = h * 8, W = w * 8;
  Tensor out = Tensor::zeros({B, C, H, W});
  const auto m = row_means(z);
  for (int64_t p = 0; p < B * C; ++p)
    for (int64_t r = 0; r < H; ++r)
      for (int64_t c = 0; c < W; ++c) out.f[(p * H + r) * W + c] = z.f[(p * h + r / 8) * w + c / 8] - m[p / C];
  return out;
}

static double max_diff(const std::vector<float>& a, const nlohmann::json& b) {
  const auto ref = b.get<std::vector<float>>();
  if (a.size() != ref.size()) return 1e9;
  double worst = 0;
  for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(double(a[k]) - double(ref[k])));
  return worst;
}

static std::optional<Size2> size_of(const nlohmann::json& v) {
  if (v.is_null()) return std::nullopt;
  return Size2{v.at(0).get<int>(), v.at(1).get<int>()};
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const auto v = check::load(argv[1]);
  for (const auto& cs : v["window_starts"]) {
    const auto got = window_starts(cs["size"], cs["window"], cs["overlap"], cs["step"]);
    check::expect(got == cs["starts"].get<std::vector<int>>(), "window_starts(" + cs["size"].dump() + ", " +
                                                                   cs["window"].dump() + ") equals Python");
  }
  for (const auto& cs : v["ramps"])
    check::expect(ramp(cs["n"], cs["overlap"]) == cs["weights"].get<std::vector<float>>(),
                  "ramp(" + cs["n"].dump() + ", " + cs["overlap"].dump() + ") equals numpy");

  auto tensor = [](const nlohmann::json& shape, const nlohmann::json& values) {
    return Tensor::from_float(shape.get<std::vector<int64_t>>(), values.get<std::vector<float>>());
  };
  const Tensor image = tensor(v["image"]["shape"], v["image"]["values"]);
  const auto& lat = v["latents"];
  const Tensor z_a = tensor(lat["shape"], lat["z_a"]), z_b = tensor(lat["shape"], lat["z_b"]),
               z_t = tensor(lat["shape"], lat["z_t"]);
  const Tensor t = Tensor::from_float({z_a.shape[0]}, lat["t"].get<std::vector<float>>());
  const Tensor embeds = tensor(lat["embeds_shape"], lat["embeds"]);
  const Tensor mask = Tensor::from_int64(lat["mask_shape"].get<std::vector<int64_t>>(), lat["mask"].get<std::vector<int64_t>>());
  // z_a[:1, :1] (make_vectors.py decodes the first channel of the first row)
  const int64_t plane = z_a.shape[2] * z_a.shape[3];
  const Tensor z_dec = Tensor::from_float({1, 1, z_a.shape[2], z_a.shape[3]},
                                          std::vector<float>(z_a.f.begin(), z_a.f.begin() + plane));

  std::vector<int> batches;  // rows of every DiT call, as WindowMeanBackend.batches
  // velocity: z_t * t + z_a - mean(z_b) + embeds, per row; spatial {z_t, z_a, z_b}, shared {embeds, mask, t}
  const Tiler::DitCall velocity = [&](const std::vector<Tensor>& x, const std::vector<Tensor>& shared) {
    const int64_t rows = x[0].shape[0], n = numel(x[0].shape) / rows;
    batches.push_back(static_cast<int>(rows));
    const Tensor &e = shared.at(0), &m = shared.at(1), &tt = shared.at(2);
    check::expect(e.shape[0] == rows && m.shape[0] == rows && m.dtype == DType::Int64 && tt.shape == std::vector<int64_t>{rows},
                  "shared inputs are repeated to the windows' rows");
    const auto mb = row_means(x[2]);
    Tensor out = x[0];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < n; ++k)
        out.f[r * n + k] = x[0].f[r * n + k] * tt.f[r] + x[1].f[r * n + k] - mb[r] + e.f[r];
    return out;
  };
  // regress: 0.5 * z_a + mean(z_b) + embeds, per row; spatial {z_a, z_b}, shared {embeds, mask}
  const Tiler::DitCall regress = [&](const std::vector<Tensor>& x, const std::vector<Tensor>& shared) {
    const int64_t rows = x[0].shape[0], n = numel(x[0].shape) / rows;
    batches.push_back(static_cast<int>(rows));
    const Tensor& e = shared.at(0);
    check::expect(e.shape[0] == rows && shared.at(1).shape[0] == rows, "shared inputs are repeated to the windows' rows");
    const auto mb = row_means(x[1]);
    Tensor out = x[0];
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < n; ++k) out.f[r * n + k] = 0.5f * x[0].f[r * n + k] + mb[r] + e.f[r];
    return out;
  };

  for (const auto& cs : v["calls"]) {
    const std::optional<int> max_batch = cs["max_batch"].is_null() ? std::nullopt : std::optional<int>(cs["max_batch"].get<int>());
    Tiler tiler(size_of(cs["window"]), size_of(cs["vae_tile"]), cs["overlap"], cs["vae_overlap"], max_batch);
    const std::string tag = "window " + cs["window"].dump() + ", VAE tile " + cs["vae_tile"].dump() + ", max batch " +
                            cs["max_batch"].dump();
    check::expect(tiler.overlap() == cs["effective_overlap"].get<int>(), tag + ": overlap clamped as in Python");
    check::expect(tiler.vae_overlap() == cs["effective_vae_overlap"].get<int>(), tag + ": VAE overlap clamped as in Python");
    check::expect(tiler.dit_windows(static_cast<int>(z_a.shape[2]), static_cast<int>(z_a.shape[3])).size() ==
                      cs["dit_windows"].get<size_t>(), tag + ": as many DiT windows as Python");
    auto counted = [&](const std::string& kind, const std::function<Tensor()>& f) {
      const int before = tiler.calls();
      batches.clear();
      const Tensor out = f();
      check::expect(max_diff(out.f, cs[kind]) <= 1e-5, tag + ": " + kind + " equals Python");
      check::expect(tiler.calls() - before == cs["counts"][kind]["calls"].get<int>(), tag + ": " + kind + " makes as many calls as Python");
      check::expect(batches == cs["counts"][kind]["batches"].get<std::vector<int>>(), tag + ": " + kind + " batches its windows as Python");
    };
    counted("encode", [&] { return tiler.encode(image, encode); });
    counted("velocity", [&] { return tiler.dit({z_t, z_a, z_b}, {embeds, mask, t}, velocity); });
    counted("regress", [&] { return tiler.dit({z_a, z_b}, {embeds, mask}, regress); });
    counted("decode", [&] { return tiler.decode(z_dec, decode); });
    check::expect(tiler.calls() == cs["calls"].get<int>(), tag + ": as many network calls as Python");
  }

  for (const auto& cs : v["plans"]) {
    const std::optional<int> tile = cs["tile"].is_null() ? std::nullopt : std::optional<int>(cs["tile"].get<int>());
    const WindowPlan plan = plan_windows(cs["height"], cs["width"], size_of(cs["limit"]), cs["window"], tile);
    const std::string tag = "plan_windows(" + cs["height"].dump() + ", " + cs["width"].dump() + ", limit " +
                            cs["limit"].dump() + ", window " + cs["window"].dump() + ", tile " + cs["tile"].dump() + ")";
    check::expect(plan.dit == size_of(cs["dit"]), tag + ": DiT window as in Python");
    check::expect(plan.vae == size_of(cs["vae"]), tag + ": VAE tile as in Python");
  }

  for (const auto& cs : v["balanced"])
    check::expect(balanced_side(cs["size"], cs["limit"], cs["overlap"]) == cs["side"].get<int>(),
                  "balanced_side(" + cs["size"].dump() + ", " + cs["limit"].dump() + ", " + cs["overlap"].dump() + ") equals Python");

  for (const auto& cs : v["memory_plans"]) {
    const std::string tag = "plan_memory(" + cs["height"].dump() + ", " + cs["width"].dump() + ", budget " +
                            cs["budget"].dump() + ", max batch " + cs["max_batch"].dump() + ", halo " + cs["halo"].dump() + ")";
    auto plan_of = [&] {
      return plan_memory(cs["height"], cs["width"], cs["h"], cs["w"], cs["sources"].get<int64_t>(), size_of(cs["limit"]),
                         cs["window"], std::nullopt, cs["budget"].get<int64_t>(),
                         cs["max_batch"].is_null() ? 0 : cs["max_batch"].get<int>(), cs["halo"]);
    };
    if (cs.contains("error")) {
      std::string message;
      try {
        plan_of();
      } catch (const Error& e) {
        message = e.what();
      }
      check::expect(message == cs["error"].get<std::string>(), tag + ": the same error as Python (" + message + ")");
      continue;
    }
    const MemoryPlan plan = plan_of();
    const auto& want = cs["plan"];
    check::expect(plan.dit_window == size_of(want["dit_window"]), tag + ": DiT window as in Python");
    check::expect(plan.vae_tile == size_of(want["vae_tile"]), tag + ": VAE tile as in Python");
    check::expect(plan.dit_batch == want["dit_batch"].get<int>(), tag + ": DiT windows per call as in Python");
    check::expect(plan.detail_rows == (want["detail_rows"].is_null() ? std::nullopt : std::optional<int>(want["detail_rows"].get<int>())),
                  tag + ": detail strip rows as in Python");
    check::expect(plan.peak == want["peak"].get<int64_t>(), tag + ": estimated peak as in Python");
    check::expect(plan.peak <= plan.budget, tag + ": within the budget");
  }
  check::expect(parse_memory("1.5G") == 3 * (int64_t{1} << 29) && parse_memory("3000MB") == 3000 * (int64_t{1} << 20),
                "parse_memory reads G / MB as powers of 1024");
  for (const std::string bad : {"3Q", "-1G", "0", ""})
    check::expect(check::throws([&] { parse_memory(bad); }), "--max-memory '" + bad + "' is an error");

  // a local graph is unchanged by tiling (the blend weights sum to one everywhere)
  Tiler tiler(Size2{32, 32}, Size2{32, 32}, 64, 16);
  const auto tiles = tiler.vae_tiles(static_cast<int>(image.shape[2]), static_cast<int>(image.shape[3]), 1);
  check::expect(tiles && tiles->size() == 6, "a 48x64 image is cut into 2 x 3 tiles of 32 px");
  const Tensor same = blend([&] {
    std::vector<Tensor> parts;
    for (const auto& w : *tiles) parts.push_back(crop_hw(image, w.y, w.x, w.h, w.w));
    return parts;
  }(), image.shape, *tiles, tiler.vae_overlap());
  check::expect(max_diff(same.f, nlohmann::json(image.f)) <= 1e-6, "tiling an identity graph is the identity");
  const Tensor stacked = concat0({mask, mask, mask});
  check::expect(stacked.shape == std::vector<int64_t>{6, 1} && stacked.dtype == DType::Int64, "concat0 stacks int64 rows");
  check::expect(check::throws([] { Tiler(Size2{16, 64}); }), "a DiT window under 32 px is an error");
  check::expect(check::throws([] { Tiler(std::nullopt, Size2{64, 16}); }), "a VAE tile under 32 px is an error");
  check::expect(check::throws([] { Tiler(Size2{64, 64}, std::nullopt, 8); }), "an overlap under 16 px is an error");
  check::expect(check::throws([] { Tiler(Size2{64, 64}, std::nullopt, 64, 128, 0); }), "a max batch under 1 is an error");
  check::expect(check::throws([] { plan_windows(64, 64, std::nullopt, 0, 16); }), "--tile under 32 px is an error");
  check::expect(check::throws([&] { crop_hw(image, 40, 0, 16, 16); }), "a window outside the tensor is an error");
  return check::finish("test_tiling");
}
