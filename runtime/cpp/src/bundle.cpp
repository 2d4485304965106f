#include "latentfuse/bundle.hpp"

#include <openssl/evp.h>

#include <cstring>
#include <fstream>
#include <iomanip>
#include <memory>
#include <sstream>

namespace latentfuse {

namespace {
constexpr int kFormatVersion = 1;

std::string short_hex(const std::string& s) { return s.substr(0, 16) + "..."; }

template <typename T>
T get_or(const json& j, const char* key, T fallback) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  return j[key].get<T>();
}

std::string dim_str(const json& d) { return d.is_string() ? d.get<std::string>() : std::to_string(d.get<int64_t>()); }

std::vector<TensorInfo> tensor_infos(const json& list, const std::string& kind, bool output) {
  std::vector<TensorInfo> out;
  for (const auto& t : list) {
    TensorInfo info{t.at("name").get<std::string>(), t.at("dtype").get<std::string>(), {}, ""};
    for (const auto& d : t.at("shape")) info.shape.push_back(dim_str(d));
    info.role = get_or<std::string>(t, "role", "");
    if (info.role.empty()) info.role = legacy_role(info.name, kind, output);
    out.push_back(std::move(info));
  }
  return out;
}

const std::string& find_role(const GraphInfo& g, const std::vector<TensorInfo>& tensors, const std::string& role,
                             const char* what) {
  for (const auto& t : tensors)
    if (t.role == role) return t.name;
  std::string listed;
  for (const auto& t : tensors) listed += (listed.empty() ? "" : ", ") + t.name + " (" + t.role + ")";
  throw Error("graph '" + g.name + "' has no " + what + " with role '" + role + "' (" + what + "s: " +
              (listed.empty() ? "none" : listed) + ")");
}
}  // namespace

std::string legacy_role(const std::string& name, const std::string& kind, bool output) {
  if (output && kind == "dit" && name == "latent") return "fused_latent";
  static const std::map<std::string, std::string> by_name = {
      {"image", "image"},           {"latent", "latent"},       {"input_ids", "token_ids"},
      {"attention_mask", "attention_mask"}, {"prompt_embeds", "prompt_embeds"}, {"prompt_mask", "prompt_mask"},
      {"z_t", "noisy_latent"},      {"t", "timestep"},          {"z_a", "source_latent_a"},
      {"z_b", "source_latent_b"},   {"velocity", "velocity"}};
  auto it = by_name.find(name);
  return it == by_name.end() ? std::string() : it->second;
}

const std::string& GraphInfo::input_for(const std::string& role) const { return find_role(*this, inputs, role, "input"); }
const std::string& GraphInfo::output_for(const std::string& role) const {
  return find_role(*this, outputs, role, "output");
}

std::string sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error("OpenSSL sha256 init failed");
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  std::ostringstream hex;
  for (unsigned int k = 0; k < len; ++k) hex << std::hex << std::setw(2) << std::setfill('0') << int(digest[k]);
  return hex.str();
}

Bundle Bundle::open(const fs::path& root, bool verify_hashes) {
  Bundle b;
  b.root_ = root;
  const fs::path path = root / "manifest.json";
  if (!fs::is_directory(root)) throw Error("bundle directory " + root.string() + " does not exist");
  if (!fs::is_regular_file(path))
    throw Error(root.string() + " is not a deployment bundle (no manifest.json); make one with "
                                "`latentfuse export --checkpoint DIR --out BUNDLE --aoti`");
  try {
    std::ifstream in(path);
    b.manifest_ = json::parse(in);
  } catch (const json::exception& err) {
    throw Error(path.string() + " is not valid JSON: " + err.what());
  }
  const json& m = b.manifest_;
  if (!m.is_object() || get_or<std::string>(m, "format", "") != "latentfuse-bundle")
    throw Error(path.string() + " is not a latentfuse bundle manifest");
  const int version = get_or<int>(m, "format_version", -1);
  if (version < 1 || version > kFormatVersion)
    throw Error(path.string() + " has format_version " + std::to_string(version) + "; this host reads up to " +
                std::to_string(kFormatVersion));
  if (!m.contains("files") || !m["files"].is_object() || !m.contains("graphs") || !m["graphs"].is_object() ||
      m["graphs"].empty())
    throw Error(path.string() + " lacks its 'files' / 'graphs' tables");
  try {
    for (const auto& [name, entry] : m["graphs"].items()) {
      const std::string kind = entry.at("kind").get<std::string>();
      GraphInfo g{name, kind, get_or<std::string>(entry, "head", ""), entry.at("file").get<std::string>(),
                  tensor_infos(entry.at("inputs"), kind, false), tensor_infos(entry.at("outputs"), kind, true)};
      if (!m["files"].contains(g.file))
        throw Error(path.string() + ": graph '" + name + "' file '" + g.file + "' is not listed in 'files'");
      b.graphs_[name] = std::move(g);
    }
    for (const auto& [rel, entry] : m["files"].items()) {
      const fs::path target = root / rel;
      if (!fs::is_regular_file(target)) throw Error(root.string() + ": " + rel + " is missing (listed in manifest.json)");
      const auto size = static_cast<int64_t>(fs::file_size(target));
      const auto recorded = entry.at("bytes").get<int64_t>();
      if (size != recorded)
        throw Error(root.string() + ": " + rel + " was modified after export (" + std::to_string(size) +
                    " bytes, the manifest records " + std::to_string(recorded) + ")");
      if (verify_hashes) {
        const std::string digest = sha256_file(target), want = entry.at("sha256").get<std::string>();
        if (digest != want)
          throw Error(root.string() + ": " + rel + " was modified after export (sha256 " + short_hex(digest) +
                      " != manifest " + short_hex(want) + ")");
      }
    }
  } catch (const json::exception& err) {
    throw Error(path.string() + " is malformed: " + err.what());
  }
  if (m.contains("detail") && !m["detail"].is_null()) b.detail_ = DetailSettings::from_json(m["detail"], path.string() + ": detail");
  return b;
}

const GraphInfo& Bundle::graph(const std::string& name) const {
  auto it = graphs_.find(name);
  if (it == graphs_.end()) {
    std::string names;
    for (const auto& [n, _] : graphs_) names += (names.empty() ? "" : ", ") + n;
    throw Error(root_.string() + ": the bundle has no '" + name + "' graph (it has " + names + ")");
  }
  return it->second;
}

std::vector<std::string> Bundle::heads() const {
  std::vector<std::string> out;
  for (const auto& [_, g] : graphs_)
    if (g.kind == "dit") out.push_back(g.head);
  return out;
}

std::string Bundle::dit_graph(const std::string& head) const {
  for (const auto& [name, g] : graphs_)
    if (g.kind == "dit" && g.head == head) return name;
  std::string names;
  for (const auto& h : heads()) names += (names.empty() ? "" : ", ") + h;
  throw Error(root_.string() + ": the bundle has no '" + head + "' DiT (heads: " + (names.empty() ? "none" : names) +
              "); use --mode " + (names.empty() ? "flow" : heads().front()) + " or export the " + head + " head");
}

int Bundle::min_side() const { return get_or<int>(manifest_.value("resolution", json::object()), "min", kPixelMultiple); }
int Bundle::max_height() const {
  const json r = manifest_.value("resolution", json::object());
  return get_or<int>(r, "max_height", get_or<int>(r, "max", 8192));
}
int Bundle::max_width() const {
  const json r = manifest_.value("resolution", json::object());
  return get_or<int>(r, "max_width", get_or<int>(r, "max", 8192));
}
int Bundle::multiple() const {
  return get_or<int>(manifest_.value("resolution", json::object()), "multiple", kPixelMultiple);
}
int Bundle::max_text_length() const { return get_or<int>(manifest_.value("text", json::object()), "max_length", 128); }
int Bundle::work_scale() const {
  const json latent = manifest_.value("latent", json::object());
  const json value = latent.is_object() && latent.contains("work_scale") ? latent["work_scale"] : json(1);
  if (!value.is_number_integer() || value.get<int>() < 1 || value.get<int>() > 4)
    throw Error((root_ / "manifest.json").string() + ": latent.work_scale must be an integer from 1 to 4, got " +
                value.dump());
  return value.get<int>();
}
int Bundle::fidelity_halo() const {
  const json graph = manifest_.at("graphs").value("fidelity", json::object());
  const json value = graph.is_object() && graph.contains("halo") ? graph["halo"] : json(nullptr);
  const int halo = value.is_number_integer() ? value.get<int>() : -1;
  if (halo < 0 || halo % kPixelMultiple)
    throw Error((root_ / "manifest.json").string() +
                ": graph 'fidelity' needs a 'halo' (rows of context, a non-negative multiple of 16), got " + value.dump());
  return halo;
}

int Bundle::window() const {
  const json latent = manifest_.value("latent", json::object());
  const json value = latent.is_object() && latent.contains("window") ? latent["window"] : json(0);
  const int w = value.is_number_integer() ? value.get<int>() : -1;
  if (w != 0 && (w < kMinSide || w % kPixelMultiple))
    throw Error((root_ / "manifest.json").string() +
                ": latent.window must be 0 or a multiple of 16 of at least 32, got " + value.dump());
  return w;
}
int64_t Bundle::text_hidden_size() const {
  return get_or<int64_t>(manifest_.value("text", json::object()), "hidden_size", 0);
}
fs::path Bundle::tokenizer_path() const {
  return root_ / get_or<std::string>(manifest_.value("text", json::object()), "tokenizer", "spiece.model");
}

std::string Bundle::default_sampler() const {
  return get_or<std::string>(manifest_.value("sampler", json::object()), "name", "midpoint_reuse_sde");
}
int Bundle::default_steps() const { return get_or<int>(manifest_.value("sampler", json::object()), "steps", 5); }
double Bundle::default_g() const { return get_or<double>(manifest_.value("sampler", json::object()), "g", -1.0); }
std::string Bundle::default_prior() const {
  return get_or<std::string>(manifest_.value("sampler", json::object()), "prior", "gaussian");
}
double Bundle::default_start() const {
  return get_or<double>(manifest_.value("sampler", json::object()), "start", 0.0);
}
double Bundle::prior_sigma() const {
  const json s = manifest_.value("sampler", json::object());
  return get_or<double>(s, "prior_sigma", get_or<double>(s, "sigma", 0.5));
}

std::map<std::string, std::string> Bundle::prompts() const {
  std::map<std::string, std::string> out;
  const json pc = manifest_.value("prompt_cache", json::object());
  if (pc.is_object() && pc.contains("prompts"))
    for (const auto& [id, text] : pc["prompts"].items()) out[id] = text.get<std::string>();
  return out;
}

std::map<std::string, PromptEmbedding> Bundle::prompt_cache_by_text() const {
  std::map<std::string, PromptEmbedding> out;
  const json pc = manifest_.value("prompt_cache", json::object());
  if (!pc.is_object() || !pc.contains("file")) return out;
  const fs::path path = root_ / pc["file"].get<std::string>();
  const auto tensors = read_safetensors(path);
  for (const auto& [id, text] : prompts()) {
    auto e = tensors.find(id + ".embeds"), k = tensors.find(id + ".mask");
    if (e == tensors.end() || k == tensors.end()) throw Error(path.string() + " has no embedding for prompt id '" + id + "'");
    out[normalize_prompt(text)] = PromptEmbedding{e->second, k->second};
  }
  return out;
}

std::map<std::string, fs::path> Bundle::artefacts(const std::string& table) const {
  std::map<std::string, fs::path> out;
  if (!manifest_.contains(table) || !manifest_[table].is_object()) return out;
  for (const auto& [name, entry] : manifest_[table].items()) {
    const std::string file = entry.is_string() ? entry.get<std::string>() : entry.at("file").get<std::string>();
    out[name] = root_ / file;
  }
  return out;
}

std::string normalize_prompt(const std::string& text) {
  std::istringstream in(text);
  std::string word, out;
  while (in >> word) out += (out.empty() ? "" : " ") + word;
  return out;
}

std::map<std::string, Tensor> read_safetensors(const fs::path& path) {
  // Format (huggingface/safetensors): u64 little-endian header size N, N bytes of JSON header
  // {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
  // then the raw little-endian data.
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read the prompt cache " + path.string());
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  const auto file_size = fs::file_size(path);
  if (!in || n == 0 || n + 8 > file_size) throw Error(path.string() + " is not a safetensors file");
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  std::vector<char> data(file_size - 8 - n);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  std::map<std::string, Tensor> out;
  try {
    const json h = json::parse(header);
    for (const auto& [name, entry] : h.items()) {
      if (name == "__metadata__") continue;
      const std::string dtype = entry.at("dtype").get<std::string>();
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto begin = entry.at("data_offsets")[0].get<uint64_t>(), end = entry.at("data_offsets")[1].get<uint64_t>();
      const size_t width = dtype == "F32" ? 4 : dtype == "I64" ? 8 : 0;
      if (!width) throw Error(path.string() + ": tensor '" + name + "' has unsupported dtype " + dtype);
      if (end > data.size() || end - begin != static_cast<uint64_t>(numel(shape)) * width)
        throw Error(path.string() + ": tensor '" + name + "' has bad data offsets");
      Tensor t = Tensor::zeros(shape, width == 4 ? DType::Float32 : DType::Int64);
      std::memcpy(width == 4 ? static_cast<void*>(t.f.data()) : static_cast<void*>(t.i.data()), data.data() + begin,
                  end - begin);
      out[name] = std::move(t);
    }
  } catch (const json::exception& err) {
    throw Error(path.string() + " has a malformed safetensors header: " + err.what());
  }
  return out;
}

}  // namespace latentfuse
