// Manifest parsing and tamper detection on a small hand-made bundle: sha256 against a known digest,
// a valid bundle opens, and a tampered / missing / resized file, bad JSON, a foreign format and a
// newer format_version are each one clear Error. Also the safetensors prompt cache.
#include <filesystem>
#include <fstream>
#include <functional>

#include "check.hpp"
#include "latentfuse/bundle.hpp"

using namespace latentfuse;
namespace fs = std::filesystem;

static std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& err) {
    return err.what();
  }
  return "";
}

static void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

static bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A safetensors file with "vif.embeds" [1, 2, 3] F32 and "vif.mask" [1, 2] I64.
static void write_cache(const fs::path& p) {
  std::vector<float> embeds = {1, 2, 3, 4, 5, 6};
  std::vector<int64_t> mask = {1, 1};
  std::string header = R"({"vif.embeds":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]},)"
                       R"("vif.mask":{"dtype":"I64","shape":[1,2],"data_offsets":[24,40]},"__metadata__":{"format":"x"}})";
  const uint64_t n = header.size();
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out.write(reinterpret_cast<const char*>(embeds.data()), 24);
  out.write(reinterpret_cast<const char*>(mask.data()), 16);
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const fs::path root = argv[1];
  fs::remove_all(root);
  fs::create_directories(root);
  write(root / "abc.txt", "abc");
  check::expect(sha256_file(root / "abc.txt") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "sha256('abc') (FIPS 180-2 example)");

  write(root / "vae_encoder.pt2", "graph bytes");
  write_cache(root / "prompt_cache.safetensors");
  json m = {{"format", "latentfuse-bundle"}, {"format_version", 1}};
  m["graphs"]["vae_encoder"] = {{"kind", "vae_encoder"}, {"file", "vae_encoder.pt2"},
                                {"inputs", {{{"name", "image"}, {"dtype", "float32"}, {"shape", {"batch", 3, "height", "width"}}}}},
                                {"outputs", {{{"name", "latent"}, {"dtype", "float32"}, {"shape", {"batch", 16, "latent_height", "latent_width"}}}}}};
  // dit_flow carries roles (one tensor renamed: found by role, not name) next to one without (by name);
  // vae_encoder and dit_regression have none, as bundles written before roles (the legacy names)
  m["graphs"]["dit_flow"] = {{"kind", "dit"}, {"head", "flow"}, {"file", "vae_encoder.pt2"},
                             {"inputs", {{{"name", "noisy"}, {"role", "noisy_latent"}, {"dtype", "float32"}, {"shape", {"batch", 16, 8, 8}}},
                                         {{"name", "t"}, {"dtype", "float32"}, {"shape", {"batch"}}}}},
                             {"outputs", {{{"name", "velocity"}, {"role", "velocity"}, {"dtype", "float32"}, {"shape", {"batch", 16, 8, 8}}}}}};
  m["graphs"]["dit_regression"] = {{"kind", "dit"}, {"head", "regression"}, {"file", "vae_encoder.pt2"},
                                   {"inputs", {{{"name", "z_a"}, {"dtype", "float32"}, {"shape", {"batch", 16, 8, 8}}}}},
                                   {"outputs", {{{"name", "latent"}, {"dtype", "float32"}, {"shape", {"batch", 16, 8, 8}}}}}};
  for (const char* f : {"abc.txt", "vae_encoder.pt2", "prompt_cache.safetensors"})
    m["files"][f] = {{"sha256", sha256_file(root / f)}, {"bytes", fs::file_size(root / f)}};
  m["resolution"] = {{"min", 64}, {"max", 1024}, {"multiple", 16}, {"max_height", 512}, {"max_width", 768}};
  m["text"] = {{"tokenizer", "spiece.model"}, {"max_length", 77}, {"hidden_size", 3}};
  m["prompt_cache"] = {{"file", "prompt_cache.safetensors"}, {"prompts", {{"vif", "fuse  the infrared\tand visible images"}}}};
  m["sampler"] = {{"name", "midpoint_reuse_sde"}, {"steps", 5}, {"g", 0.3}, {"prior", "gaussian"}};
  m["aoti"] = {{"vae_encoder", {{"file", "vae_encoder.pt2"}, {"device", "cpu"}}}};
  write(root / "manifest.json", m.dump(2));

  const Bundle b = Bundle::open(root);
  check::expect(b.graph("vae_encoder").inputs.at(0).shape == std::vector<std::string>({"batch", "3", "height", "width"}),
                "graph input dims");
  check::expect(b.dit_graph("flow") == "dit_flow", "dit graph by head");
  check::expect(b.input_for("dit_flow", "noisy_latent") == "noisy", "input found by its manifest role");
  check::expect(b.input_for("dit_flow", "timestep") == "t", "input without a role: found by its legacy name");
  check::expect(b.graph("dit_flow").output_for("velocity") == "velocity", "output by role");
  check::expect(b.input_for("vae_encoder", "image") == "image" && b.graph("vae_encoder").output_for("latent") == "latent",
                "bundle without roles: image / latent by name");
  check::expect(b.graph("dit_regression").inputs.at(0).role == "source_latent_a" &&
                    b.graph("dit_regression").output_for("fused_latent") == "latent",
                "bundle without roles: a DiT's 'latent' output is the fused latent");
  check::expect(contains(error_of([&] { b.dit_graph("other"); }), "no 'other' DiT"), "missing head error");
  check::expect(contains(error_of([&] { b.input_for("dit_flow", "prompt_mask"); }), "no input with role 'prompt_mask'"),
                "missing role error");
  check::expect(legacy_role("z_b", "dit", false) == "source_latent_b" && legacy_role("mystery", "dit", false).empty(),
                "legacy role table");
  check::expect(contains(error_of([&] { b.graph("nope"); }), "no 'nope' graph"), "missing graph error");
  check::expect(b.max_height() == 512 && b.max_width() == 768 && b.max_text_length() == 77, "resolution / text");
  check::expect(b.default_sampler() == "midpoint_reuse_sde" && b.default_steps() == 5 && b.default_g() == 0.3, "sampler defaults");
  check::expect(b.artefacts("aoti").at("vae_encoder") == root / "vae_encoder.pt2", "aoti table");
  const auto cache = b.prompt_cache_by_text();
  check::expect(cache.count("fuse the infrared and visible images") == 1, "prompt cache keyed by normalised text");
  if (cache.count("fuse the infrared and visible images")) {
    const auto& e = cache.at("fuse the infrared and visible images");
    check::expect(e.embeds.shape == std::vector<int64_t>({1, 2, 3}) && e.embeds.f.back() == 6.0f, "cached embeds");
    check::expect(e.mask.dtype == DType::Int64 && e.mask.i == std::vector<int64_t>({1, 1}), "cached mask");
  }

  // tampering: same size, one byte changed -> sha256 mismatch naming the file
  write(root / "vae_encoder.pt2", "graph bytez");
  std::string err = error_of([&] { Bundle::open(root); });
  check::expect(contains(err, "vae_encoder.pt2") && contains(err, "sha256"), "tampered file detected: " + err);
  check::expect(error_of([&] { Bundle::open(root, false); }).empty(), "size-only check passes without hashes");
  write(root / "vae_encoder.pt2", "graph bytes!");
  err = error_of([&] { Bundle::open(root, false); });
  check::expect(contains(err, "vae_encoder.pt2") && contains(err, "bytes"), "resized file detected: " + err);
  fs::remove(root / "vae_encoder.pt2");
  err = error_of([&] { Bundle::open(root); });
  check::expect(contains(err, "vae_encoder.pt2 is missing"), "missing file detected: " + err);
  write(root / "vae_encoder.pt2", "graph bytes");
  check::expect(error_of([&] { Bundle::open(root); }).empty(), "restored bundle opens");

  // the optional detail section (model.image_processing.detail.DetailSettings.to_dict()): absent -> none; parsed at open
  check::expect(!b.detail().has_value(), "a bundle without a 'detail' section has no detail path");
  json with_detail = m;
  with_detail["detail"] = {
      {"clean", {{"sigma", 8.0}, {"radius", 4}, {"fused_candidate", false}, {"gain", 1.0}, {"noise_k", 0.0}, {"channels", "rgb"}}},
      {"safe", {{"sigma", 4.0}, {"radius", 4}, {"fused_candidate", true}, {"gain", 1.0}, {"noise_k", 3.0}, {"channels", "luma"}}},
      {"clean_prompts", {"fuse the infrared and visible images", "fuse the multi-exposure images", "fuse the multi-focus images"}},
      {"off_prefixes", {"rain", "derain", "snow", "desnow", "strip", "destrip", "bands", "lines"}}};
  write(root / "manifest.json", with_detail.dump(2));
  const Bundle bd = Bundle::open(root);
  check::expect(bd.detail() && bd.detail()->clean.sigma == 8.0 && !bd.detail()->clean.fused_candidate &&
                    bd.detail()->clean.channels == "rgb" && bd.detail()->safe.channels == "luma" &&
                    bd.detail()->safe.sigma == 4.0 && bd.detail()->mode_for("Fuse the infrared and visible images") == "clean" &&
                    bd.detail()->mode_for("derain the images") == "off",
                "the detail section is read");
  check::expect(bd.detail() && bd.detail()->to_json() == with_detail["detail"], "the detail section round-trips");
  with_detail["detail"]["safe"]["radius"] = -2;
  write(root / "manifest.json", with_detail.dump(2));
  err = error_of([&] { Bundle::open(root); });
  check::expect(contains(err, "manifest.json: detail.safe.radius"), "a malformed detail section fails at open: " + err);
  with_detail["detail"].erase("clean_prompts");
  write(root / "manifest.json", with_detail.dump(2));
  err = error_of([&] { Bundle::open(root); });
  check::expect(contains(err, "manifest.json: detail") && contains(err, "clean_prompts"), "a detail section without clean_prompts: " + err);
  with_detail["detail"] = nullptr;
  write(root / "manifest.json", with_detail.dump(2));
  check::expect(!Bundle::open(root).detail().has_value(), "\"detail\": null is no detail path");

  json bad = m;
  bad["format_version"] = 2;
  write(root / "manifest.json", bad.dump());
  check::expect(contains(error_of([&] { Bundle::open(root); }), "format_version 2"), "newer format rejected");
  bad = m;
  bad["format"] = "something-else";
  write(root / "manifest.json", bad.dump());
  check::expect(contains(error_of([&] { Bundle::open(root); }), "not a latentfuse bundle"), "foreign manifest rejected");
  bad = m;
  bad["graphs"]["vae_encoder"]["file"] = "unlisted.pt2";
  write(root / "manifest.json", bad.dump());
  check::expect(contains(error_of([&] { Bundle::open(root); }), "not listed in 'files'"), "unlisted graph file rejected");
  write(root / "manifest.json", "{not json");
  check::expect(contains(error_of([&] { Bundle::open(root); }), "not valid JSON"), "bad JSON rejected");
  fs::remove(root / "manifest.json");
  check::expect(contains(error_of([&] { Bundle::open(root); }), "no manifest.json"), "no manifest rejected");
  check::expect(contains(error_of([&] { Bundle::open(root / "nowhere"); }), "does not exist"), "missing dir rejected");
  check::expect(normalize_prompt("  a \t b\n c ") == "a b c", "prompt normalisation");
  return check::finish("test_bundle");
}
