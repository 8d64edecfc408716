#include "bundle.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "file.h"
#include "json.h"
#include "npy.h"
#include "refusal.h"
#include "sha256.h"

namespace mscnn {
namespace {

constexpr const char* kSchema = "mscnn-edge/bundle";
constexpr std::int64_t kSchemaVersion = 1;
constexpr const char* kRebuild = "rebuild the bundle with `python -m compile build`";

// Reads typed fields out of the parsed manifest; every failure names the dotted key.
class ManifestReader {
 public:
  explicit ManifestReader(std::string where) : where_(std::move(where)) {}

  [[noreturn]] void Bad(const std::string& what) const {
    throw Refusal(where_ + " is malformed: " + what + "; " + kRebuild);
  }

  const Json& Get(const Json& parent, const std::string& key, const std::string& path,
                  Json::Kind kind) const {
    const Json* value = parent.Find(key);
    if (value == nullptr) Bad("key \"" + path + "\" is missing");
    if (value->kind != kind) {
      Bad("\"" + path + "\" is " + Json::KindName(value->kind) + ", expected " +
          Json::KindName(kind));
    }
    return *value;
  }

  std::string String(const Json& parent, const std::string& key, const std::string& path) const {
    return Get(parent, key, path, Json::Kind::kString).text;
  }

  std::int64_t Integer(const Json& value, const std::string& path) const {
    std::int64_t out;
    if (value.kind != Json::Kind::kNumber || !value.AsInteger(&out)) {
      Bad("\"" + path + "\" is not an integer");
    }
    return out;
  }

  TensorSpec Tensor(const Json& root, const std::string& key) const {
    const Json& spec = Get(root, key, key, Json::Kind::kObject);
    TensorSpec out;
    out.name = String(spec, "name", key + ".name");
    out.dtype = String(spec, "dtype", key + ".dtype");
    if (out.dtype != "float32") Bad("\"" + key + ".dtype\" is " + out.dtype + ", expected float32");
    const Json& shape = Get(spec, "shape", key + ".shape", Json::Kind::kArray);
    if (shape.items.empty()) Bad("\"" + key + ".shape\" is empty");
    for (const Json& dim : shape.items) {
      std::int64_t value = Integer(dim, key + ".shape[]");
      if (value <= 0) Bad("\"" + key + ".shape\" has a non-positive dimension");
      out.shape.push_back(value);
    }
    return out;
  }

 private:
  std::string where_;
};

// Listed paths come from a file we have not yet trusted: keep them inside the bundle.
bool SafeRelativePath(const std::string& path) {
  if (path.empty() || path[0] == '/' || path.find('\\') != std::string::npos ||
      path.find('\0') != std::string::npos) {
    return false;
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
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

// ELF identification of the machines a bundle can target: e_machine and word size.
struct ElfKind {
  const char* arch;
  unsigned machine;
  unsigned elf_class;  // 1: 32-bit, 2: 64-bit
};
constexpr ElfKind kElfKinds[] = {{"x86_64", 62, 2}, {"aarch64", 183, 2}, {"armv7", 40, 1}};

std::string Number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

const char* ArchOfElf(unsigned machine, unsigned elf_class) {
  for (const ElfKind& kind : kElfKinds) {
    if (kind.machine == machine && kind.elf_class == elf_class) return kind.arch;
  }
  return nullptr;
}

}  // namespace

Bundle Bundle::Open(const std::string& dir_arg) {
  std::string dir = dir_arg;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    throw Refusal("bundle folder " + dir + " does not exist; pass the folder that holds "
                  "manifest.json (for example build/x86_64/cpsc2019-1lead)");
  }
  if (!S_ISDIR(st.st_mode)) {
    throw Refusal(dir + " is not a folder; pass the bundle folder that holds manifest.json");
  }
  const std::string where = dir + "/manifest.json";
  std::FILE* f = std::fopen(where.c_str(), "rb");
  if (f == nullptr) {
    if (errno == ENOENT) {
      throw Refusal(dir + " holds no manifest.json, so it is not a bundle (or its build did not "
                    "finish); " + kRebuild);
    }
    throw Refusal("cannot read " + where + ": " + std::strerror(errno));
  }
  const std::string text = ReadAllAndClose(f, where);

  Json root;
  try {
    root = ParseJson(text);
  } catch (const JsonError& e) {
    throw Refusal(where + " is not valid JSON (" + e.what() + "); " + kRebuild);
  }
  ManifestReader r(where);
  if (root.kind != Json::Kind::kObject) r.Bad("the document is not a JSON object");

  const Json* schema = root.Find("schema");
  if (schema == nullptr || schema->kind != Json::Kind::kString || schema->text != kSchema) {
    throw Refusal(where + " is not an mscnn-edge bundle manifest (\"schema\" is not \"" +
                  std::string(kSchema) + "\"); " + kRebuild);
  }
  const Json* version = root.Find("schema_version");
  std::int64_t version_value = 0;
  if (version == nullptr || !version->AsInteger(&version_value)) {
    r.Bad("\"schema_version\" is missing or not an integer");
  }
  if (version_value != kSchemaVersion) {
    throw Refusal(where + " has schema_version " + std::to_string(version_value) +
                  "; this mscnn-run reads version " + std::to_string(kSchemaVersion) +
                  " only: rebuild the bundle with the matching compile stage, or update "
                  "mscnn-run");
  }

  Bundle bundle;
  bundle.dir_ = dir;
  Manifest& m = bundle.manifest_;
  m.name = r.String(root, "name", "name");
  const Json& target = r.Get(root, "target", "target", Json::Kind::kObject);
  m.target_name = r.String(target, "name", "target.name");
  m.arch = r.String(target, "arch", "target.arch");
  if (m.arch != "x86_64" && m.arch != "aarch64" && m.arch != "armv7") {
    r.Bad("\"target.arch\" is \"" + m.arch + "\", expected x86_64, aarch64 or armv7");
  }
  m.device = r.String(target, "device", "target.device");
  if (m.device != "cpu" && m.device != "cuda") {
    r.Bad("\"target.device\" is \"" + m.device + "\", expected cpu or cuda");
  }
  const Json& leads = r.Get(root, "leads", "leads", Json::Kind::kArray);
  for (const Json& lead : leads.items) {
    if (lead.kind != Json::Kind::kString) r.Bad("\"leads\" holds a non-string");
    m.leads.push_back(lead.text);
  }
  if (m.leads.empty()) r.Bad("\"leads\" is empty");
  m.fs = r.Get(root, "fs", "fs", Json::Kind::kNumber).number;
  m.input = r.Tensor(root, "input");
  m.output = r.Tensor(root, "output");
  if (m.input.shape.size() != 3) r.Bad("\"input.shape\" is not (batch, leads, samples)");
  if (m.input.shape[1] != std::int64_t(m.leads.size())) {
    r.Bad("\"input.shape\" has " + std::to_string(m.input.shape[1]) + " leads but \"leads\" names " +
          std::to_string(m.leads.size()));
  }

  const Json& files = r.Get(root, "files", "files", Json::Kind::kObject);
  for (const auto& member : files.members) {
    const std::string key = "files[\"" + member.first + "\"]";
    if (!SafeRelativePath(member.first)) {
      r.Bad(key + " is not a plain path inside the bundle");
    }
    if (member.second.kind != Json::Kind::kObject) r.Bad(key + " is not an object");
    ListedFile listed;
    listed.path = member.first;
    listed.sha256 = r.String(member.second, "sha256", key + ".sha256");
    if (!IsHex64(listed.sha256)) r.Bad(key + ".sha256 is not 64 lower-case hex digits");
    const Json& size = r.Get(member.second, "bytes", key + ".bytes", Json::Kind::kNumber);
    std::int64_t bytes = r.Integer(size, key + ".bytes");
    if (bytes < 0) r.Bad(key + ".bytes is negative");
    listed.bytes = std::uint64_t(bytes);
    m.files.push_back(listed);
  }
  auto listed = [&m](const std::string& path) {
    for (const ListedFile& f : m.files) {
      if (f.path == path) return true;
    }
    return false;
  };
  if (!listed("model.so")) r.Bad("\"files\" does not list model.so");

  const Json& golden = r.Get(root, "golden", "golden", Json::Kind::kArray);
  for (const Json& entry : golden.items) {
    if (entry.kind != Json::Kind::kObject) r.Bad("\"golden\" holds a non-object");
    GoldenPair pair;
    pair.name = r.String(entry, "name", "golden[].name");
    pair.input = r.String(entry, "input", "golden[].input");
    pair.output = r.String(entry, "output", "golden[].output");
    // Golden data is only trusted once hashed, so it must be among the listed files.
    for (const std::string* path : {&pair.input, &pair.output}) {
      if (!listed(*path)) r.Bad("golden file " + *path + " is not listed in \"files\"");
    }
    m.golden.push_back(pair);
  }
  return bundle;
}

void Bundle::VerifyFiles() const {
  for (const ListedFile& f : manifest_.files) {
    const std::string path = PathOf(f.path);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      throw Refusal("bundle file " + f.path + " is missing from " + dir_ +
                    "; the bundle is incomplete: copy it again or " + kRebuild);
    }
    if (std::uint64_t(st.st_size) != f.bytes) {
      throw Refusal("bundle file " + f.path + " has " + std::to_string(st.st_size) +
                    " bytes, the manifest lists " + std::to_string(f.bytes) +
                    " (size mismatch: truncated or replaced); copy the bundle again or " +
                    kRebuild);
    }
    std::string digest;
    std::uint64_t bytes = 0;
    if (!HashFile(path, &digest, &bytes)) {
      throw Refusal("cannot read bundle file " + f.path + ": " + std::strerror(errno));
    }
    if (digest != f.sha256) {
      throw Refusal("bundle file " + f.path + " fails verification: sha256 mismatch (manifest " +
                    f.sha256.substr(0, 12) + "..., file " + digest.substr(0, 12) +
                    "...); it was modified or corrupted, so it was not loaded: copy the bundle "
                    "again or " + kRebuild);
    }
  }
}

void Bundle::RequireArch(const std::string& runner_arch) const {
  const Manifest& m = manifest_;
  if (m.arch != runner_arch) {
    const std::string where = m.arch == "x86_64" ? "an x86_64 machine"
                                                 : "an " + m.arch + " device or under qemu-user";
    throw Refusal("bundle " + m.name + " is built for " + m.arch + " (target " + m.target_name +
                  ") but this mscnn-run is built for " + runner_arch + "; run it with the " +
                  m.arch + " build of mscnn-run (make -C deploy/native ARCH=" + m.arch + ") on " +
                  where);
  }
}

void Bundle::CheckLibraryMachine(const std::string& runner_arch) const {
  // The manifest may lie about its target; the library's own ELF header cannot, and a
  // foreign one would only fail obscurely inside dlopen.
  const std::string path = PathOf("model.so");
  unsigned char head[20] = {0};
  std::FILE* f = std::fopen(path.c_str(), "rb");
  std::size_t got = 0;
  if (f != nullptr) {
    got = std::fread(head, 1, sizeof head, f);
    std::fclose(f);
  }
  if (got < sizeof head || std::memcmp(head, "\x7f" "ELF", 4) != 0) {
    throw Refusal("model.so in " + dir_ + " is not an ELF shared library; " + kRebuild);
  }
  const unsigned elf_class = head[4];
  const unsigned machine = head[5] == 2 ? (unsigned(head[18]) << 8) | head[19]
                                        : unsigned(head[18]) | (unsigned(head[19]) << 8);
  const char* arch = ArchOfElf(machine, elf_class);
  if (arch == nullptr || runner_arch != arch) {
    throw Refusal("model.so in " + dir_ + " is code for " +
                  (arch ? std::string(arch) : "ELF machine " + std::to_string(machine)) +
                  ", not for " + runner_arch + " as this mscnn-run; " + kRebuild +
                  " for the right target");
  }
}

std::string DescribeShapeMismatch(const Manifest& m, const std::vector<std::int64_t>& got) {
  const std::vector<std::int64_t>& want = m.input.shape;
  std::string leads;
  for (std::size_t i = 0; i < m.leads.size(); ++i) leads += (i ? ", " : "") + m.leads[i];
  std::string text = "expected (batch, leads, samples) = " + ShapeText(want) + " [leads " +
                     leads + "], got " + ShapeText(got);
  if (got.size() != 3) {
    return text + ": a " + std::to_string(got.size()) + "-D array instead of 3-D";
  }
  std::vector<std::string> why;
  if (got[0] != want[0]) {
    why.push_back("batch " + std::to_string(got[0]) + " instead of " + std::to_string(want[0]));
  }
  if (got[1] != want[1]) {
    why.push_back(std::to_string(got[1]) + " leads instead of " + std::to_string(want[1]));
  }
  if (got[2] != want[2]) {
    why.push_back(std::to_string(got[2]) + " samples instead of " + std::to_string(want[2]) +
                  " (" + Number(double(want[2]) / m.fs) + " s at " + Number(m.fs) + " Hz)");
  }
  for (std::size_t i = 0; i < why.size(); ++i) text += (i ? ", " : ": ") + why[i];
  return text;
}

}  // namespace mscnn
