#include "manifest.h"

#include <cmath>
#include <unordered_set>

#include "json.h"
#include "refusal.h"
#include "text.h"

namespace mscnn {
namespace {

constexpr const char* kSchema = "mscnn-edge/bundle";
// Version 2 added whole-model keys (model.task, model.classes, detect, parity.task) that
// mscnn-run has no use for; the keys it reads are the same in both.
constexpr std::int64_t kOldestVersion = 2, kNewestVersion = 2;
constexpr const char* kRebuild = "rebuild the bundle with `python -m compile build`";
// Beyond any file or tensor of these models; keeps every size in a 32-bit size_t.
constexpr std::int64_t kMaxBytes = std::int64_t(1) << 31;

// Reads typed fields out of the parsed manifest; every failure names the dotted key.
class ManifestReader {
 public:
  explicit ManifestReader(std::string where) : where_(std::move(where)) {}

  [[noreturn]] void Bad(const std::string& what) const {
    throw Refusal(where_ + " is malformed: " + what + "; " + kRebuild);
  }

  const Json& Get(const Json& parent, const char* key, const std::string& path,
                  Json::Kind kind) const {
    const Json* value = parent.Find(key);
    if (value == nullptr) Bad("key \"" + path + "\" is missing");
    if (value->kind != kind) {
      Bad("\"" + path + "\" is " + Json::KindName(value->kind) + ", expected " +
          Json::KindName(kind));
    }
    return *value;
  }

  std::string String(const Json& parent, const char* key, const std::string& path) const {
    return Get(parent, key, path, Json::Kind::kString).text;
  }

  // An integer written as one (not 1.0, not true) within [low, high].
  std::int64_t Integer(const Json& value, const std::string& path, std::int64_t low,
                       std::int64_t high) const {
    if (!value.integer) Bad("\"" + path + "\" is not an integer");
    if (value.int_value < low || value.int_value > high) {
      Bad("\"" + path + "\" is " + std::to_string(value.int_value) + ", outside " +
          std::to_string(low) + ".." + std::to_string(high));
    }
    return value.int_value;
  }

  TensorSpec Tensor(const Json& root, const char* key) const {
    const std::string k = key;
    const Json& spec = Get(root, key, k, Json::Kind::kObject);
    TensorSpec out;
    out.name = String(spec, "name", k + ".name");
    out.dtype = String(spec, "dtype", k + ".dtype");
    if (out.dtype != "float32") {
      Bad("\"" + k + ".dtype\" is " + Clip(out.dtype) + ", expected float32");
    }
    const Json& shape = Get(spec, "shape", k + ".shape", Json::Kind::kArray);
    if (shape.items.empty()) Bad("\"" + k + ".shape\" is empty");
    if (shape.items.size() > 8) Bad("\"" + k + ".shape\" has more than 8 dimensions");
    std::int64_t bytes = 4;
    for (const Json& dim : shape.items) {
      if (dim.integer && dim.int_value <= 0) {
        Bad("\"" + k + ".shape\" has a non-positive dimension");
      }
      const std::int64_t value = Integer(dim, k + ".shape[]", 1, kMaxBytes);
      if (bytes > kMaxBytes / value) Bad("\"" + k + ".shape\" describes more than 2 GiB of data");
      bytes *= value;
      out.shape.push_back(value);
    }
    return out;
  }

 private:
  std::string where_;
};

// Listed paths come from a file we have not yet trusted: keep them inside the bundle.
bool SafeRelativePath(const std::string& path) {
  if (path.empty() || path.size() > 1024 || path[0] == '/' ||
      path.find('\\') != std::string::npos || path.find('\0') != std::string::npos) {
    return false;
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == ".." || part.size() > 255) return false;
    start = end + 1;
  }
  return true;
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void CheckSchema(const ManifestReader& r, const Json& root, const std::string& where) {
  const Json* schema = root.Find("schema");
  if (schema == nullptr || schema->kind != Json::Kind::kString || schema->text != kSchema) {
    throw Refusal(where + " is not an mscnn-edge bundle manifest (\"schema\" is not \"" +
                  std::string(kSchema) + "\"); " + kRebuild);
  }
  const Json* version = root.Find("schema_version");
  if (version == nullptr || !version->integer) {
    r.Bad("\"schema_version\" is missing or not an integer");
  }
  if (version->int_value < kOldestVersion || version->int_value > kNewestVersion) {
    throw Refusal(where + " has schema_version " + std::to_string(version->int_value) +
                  "; this mscnn-run reads versions " + std::to_string(kOldestVersion) + " to " +
                  std::to_string(kNewestVersion) + " only: rebuild the bundle with the "
                  "matching compile stage, or update mscnn-run");
  }
}

void ReadTarget(const ManifestReader& r, const Json& root, Manifest* m) {
  m->name = r.String(root, "name", "name");
  const Json* model = root.Find("model");
  const Json* preset = model != nullptr && model->kind == Json::Kind::kObject
                           ? model->Find("preset") : nullptr;
  if (preset != nullptr && preset->kind == Json::Kind::kString) m->preset = preset->text;
  const Json& target = r.Get(root, "target", "target", Json::Kind::kObject);
  m->target_name = r.String(target, "name", "target.name");
  m->arch = r.String(target, "arch", "target.arch");
  if (m->arch != "x86_64" && m->arch != "aarch64" && m->arch != "armv7") {
    r.Bad("\"target.arch\" is \"" + Clip(m->arch) + "\", expected x86_64, aarch64 or armv7");
  }
  m->device = r.String(target, "device", "target.device");
  if (m->device != "cpu" && m->device != "cuda") {
    r.Bad("\"target.device\" is \"" + Clip(m->device) + "\", expected cpu or cuda");
  }
  // "precision": missing or null in fp32 bundles; int8 and fp16 bundles are judged by
  // their own tolerance rows (int8: bit for bit).
  const Json* precision = root.Find("precision");
  if (precision != nullptr && precision->kind != Json::Kind::kNull) {
    m->precision = r.String(root, "precision", "precision");
    if (m->precision != "fp32" && m->precision != "int8" && m->precision != "fp16") {
      r.Bad("\"precision\" is \"" + Clip(m->precision) + "\", expected fp32, int8 or fp16");
    }
    if (m->precision == "int8") {  // what its golden outputs are: the int8 reference's
      r.Get(root, "quantization", "quantization", Json::Kind::kObject);
    }
  }
}

void ReadSignal(const ManifestReader& r, const Json& root, Manifest* m) {
  for (const Json& lead : r.Get(root, "leads", "leads", Json::Kind::kArray).items) {
    if (lead.kind != Json::Kind::kString) r.Bad("\"leads\" holds a non-string");
    m->leads.push_back(lead.text);
  }
  if (m->leads.empty()) r.Bad("\"leads\" is empty");
  m->fs = r.Get(root, "fs", "fs", Json::Kind::kNumber).number;
  if (!std::isfinite(m->fs) || m->fs <= 0.0) r.Bad("\"fs\" is not a positive sampling rate");
  m->input = r.Tensor(root, "input");
  m->output = r.Tensor(root, "output");
  if (m->input.shape.size() != 3) r.Bad("\"input.shape\" is not (batch, leads, samples)");
  if (m->input.shape[1] != std::int64_t(m->leads.size())) {
    r.Bad("\"input.shape\" has " + std::to_string(m->input.shape[1]) +
          " leads but \"leads\" names " + std::to_string(m->leads.size()));
  }
}

void ReadFiles(const ManifestReader& r, const Json& root, Manifest* m) {
  for (const auto& member : r.Get(root, "files", "files", Json::Kind::kObject).members) {
    const std::string key = "files[\"" + Clip(member.first) + "\"]";
    if (!SafeRelativePath(member.first)) r.Bad(key + " is not a plain path inside the bundle");
    if (member.second.kind != Json::Kind::kObject) r.Bad(key + " is not an object");
    ListedFile listed;
    listed.path = member.first;
    listed.sha256 = r.String(member.second, "sha256", key + ".sha256");
    if (!IsHex64(listed.sha256)) r.Bad(key + ".sha256 is not 64 lower-case hex digits");
    const Json& bytes = r.Get(member.second, "bytes", key + ".bytes", Json::Kind::kNumber);
    listed.bytes = std::uint64_t(r.Integer(bytes, key + ".bytes", 0, kMaxBytes));
    m->files.push_back(listed);
  }
}

void ReadGolden(const ManifestReader& r, const Json& root, Manifest* m) {
  std::unordered_set<std::string> listed;
  for (const ListedFile& f : m->files) listed.insert(f.path);
  if (listed.count("model.so") == 0) r.Bad("\"files\" does not list model.so");
  for (const Json& entry : r.Get(root, "golden", "golden", Json::Kind::kArray).items) {
    if (entry.kind != Json::Kind::kObject) r.Bad("\"golden\" holds a non-object");
    GoldenPair pair;
    pair.name = r.String(entry, "name", "golden[].name");
    pair.input = r.String(entry, "input", "golden[].input");
    pair.output = r.String(entry, "output", "golden[].output");
    // Golden data is only trusted once hashed, so it must be among the listed files.
    for (const std::string* path : {&pair.input, &pair.output}) {
      if (listed.count(*path) == 0) {
        r.Bad("golden file " + Clip(*path) + " is not listed in \"files\"");
      }
    }
    m->golden.push_back(pair);
  }
}

// "detect": null or missing for a model that is not an R-peak detector.
void ReadDetect(const ManifestReader& r, const Json& root, Manifest* m) {
  const Json* rule = root.Find("detect");
  if (rule == nullptr || rule->kind == Json::Kind::kNull) return;
  r.Get(root, "detect", "detect", Json::Kind::kObject);
  const double t = r.Get(*rule, "threshold", "detect.threshold", Json::Kind::kNumber).number;
  if (!(t > 0.0 && t < 1.0)) r.Bad("\"detect.threshold\" is not a probability in (0, 1)");
  m->detect.threshold = t;
  auto integer = [&](const char* key, std::int64_t low) {
    const std::string path = std::string("detect.") + key;
    return r.Integer(r.Get(*rule, key, path, Json::Kind::kNumber), path, low, kMaxBytes);
  };
  m->detect.min_rr_ms = integer("min_rr_ms", 0);
  m->detect.edge_ms = integer("edge_ms", 0);
  m->detect.reduction = integer("reduction", 1);
  m->detect.fs = integer("fs", 1);
  m->has_detect = true;
}

// "stream": null or missing for a window bundle.
void ReadStream(const ManifestReader& r, const Json& root, Manifest* m) {
  const Json* info = root.Find("stream");
  if (info == nullptr || info->kind == Json::Kind::kNull) return;
  r.Get(root, "stream", "stream", Json::Kind::kObject);
  StreamSpec& s = m->stream;
  auto integer = [&](const char* key, std::int64_t low) {
    const std::string path = std::string("stream.") + key;
    return r.Integer(r.Get(*info, key, path, Json::Kind::kNumber), path, low, kMaxBytes);
  };
  s.hop = integer("hop", 1);
  s.reduction = integer("reduction", 1);
  s.channels = integer("channels", 1);
  s.delay_frames = integer("delay_frames", 0);
  s.look_ahead = integer("look_ahead", 0);
  s.flush_steps = integer("flush_steps", 1);
  s.state_bytes = integer("state_bytes", 0);
  if (s.hop % s.reduction != 0) r.Bad("\"stream.hop\" is not a multiple of stream.reduction");
  if (s.hop > (std::int64_t(1) << 24)) r.Bad("\"stream.hop\" is over 16777216 samples");
  std::int64_t bytes = 0;
  for (const Json& entry : r.Get(*info, "states", "stream.states", Json::Kind::kArray).items) {
    if (entry.kind != Json::Kind::kObject) r.Bad("\"stream.states\" holds a non-object");
    StateSpec state;
    state.name = r.String(entry, "name", "stream.states[].name");
    state.dtype = r.String(entry, "dtype", "stream.states[].dtype");
    std::int64_t state_bytes = StateElementBytes(state.dtype);
    if (state_bytes == 0) {
      r.Bad("\"stream.states[].dtype\" is " + Clip(state.dtype) +
            ", expected float32, int64, int16, int8 or uint8");
    }
    const Json& shape = r.Get(entry, "shape", "stream.states[].shape", Json::Kind::kArray);
    if (shape.items.size() > 8) r.Bad("\"stream.states[].shape\" has more than 8 dimensions");
    for (const Json& dim : shape.items) {
      const std::int64_t v = r.Integer(dim, "stream.states[].shape[]", 1, kMaxBytes);
      if (state_bytes > kMaxBytes / v) r.Bad("\"stream.states\" describe more than 2 GiB");
      state_bytes *= v;
      state.shape.push_back(v);
    }
    bytes += state_bytes;
    if (bytes > kMaxBytes) r.Bad("\"stream.states\" describe more than 2 GiB");
    s.states.push_back(state);
  }
  if (s.states.size() > 4096) r.Bad("\"stream.states\" lists more than 4096 tensors");
  m->has_stream = true;
}

}  // namespace

Manifest ParseManifest(const std::string& text, const std::string& where) {
  Json root;
  try {
    root = ParseJson(text);
  } catch (const JsonError& e) {
    throw Refusal(where + " is not valid JSON (" + e.what() + "); " + kRebuild);
  }
  ManifestReader r(where);
  if (root.kind != Json::Kind::kObject) r.Bad("the document is not a JSON object");
  CheckSchema(r, root, where);
  Manifest m;
  ReadTarget(r, root, &m);
  ReadSignal(r, root, &m);
  ReadFiles(r, root, &m);
  ReadGolden(r, root, &m);
  try {
    ReadDetect(r, root, &m);
  } catch (const Refusal& e) {
    m.has_detect = false;
    m.detect_error = e.what();
  }
  try {
    ReadStream(r, root, &m);
  } catch (const Refusal& e) {
    m.has_stream = false;
    m.stream = StreamSpec();
    m.stream_error = e.what();
  }
  return m;
}

std::int64_t StateElementBytes(const std::string& dtype) {
  if (dtype == "float32") return 4;
  if (dtype == "int64") return 8;
  if (dtype == "int16") return 2;
  if (dtype == "int8" || dtype == "uint8") return 1;
  return 0;
}

}  // namespace mscnn
