#include "bundle.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "elf.h"
#include "npy.h"
#include "refusal.h"
#include "sha256.h"
#include "text.h"

namespace mscnn {
namespace {

constexpr const char* kRebuild = "rebuild the bundle with `python -m compile build`";
// Python's loader has the same cap; real manifests are a few KiB.
constexpr std::uint64_t kMaxManifest = 1 << 20;

std::string Number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

// The manifest, bounded: a regular file inside the folder, at most kMaxManifest bytes.
std::string ReadManifestText(int dir_fd, const std::string& dir) {
  const std::string where = dir + "/manifest.json";
  InsideFile file = OpenInside(dir_fd, "manifest.json");
  switch (file.status) {
    case InsideFile::Status::kOk:
      break;
    case InsideFile::Status::kMissing:
      throw Refusal(dir + " holds no manifest.json, so it is not a bundle (or its build did "
                    "not finish); " + kRebuild);
    case InsideFile::Status::kSymlink:
      throw Refusal(where + " is a symbolic link; a bundle holds its own files (a link could "
                    "point anywhere): copy the bundle again without links or " + kRebuild);
    case InsideFile::Status::kNotRegular:
      throw Refusal(where + " is not a regular file (a folder, device or pipe); " + kRebuild);
    case InsideFile::Status::kError:
      throw Refusal("cannot read " + where + ": " + std::strerror(file.error));
  }
  if (file.size > kMaxManifest) {
    throw Refusal(where + " is " + std::to_string(file.size) + " bytes, more than the 1 MiB " +
                  "a bundle manifest may have; it is not one: " + kRebuild);
  }
  std::string text(std::size_t(file.size), '\0');
  ReadExactly(file.fd.get(), 0, &text[0], text.size(), where);
  return text;
}

// Hashes `size` bytes of `fd` in chunks, writing each chunk to `copy` (if >= 0) or
// appending it to `keep` (if not null): the bytes used later are the bytes hashed.
std::string HashFd(int fd, std::uint64_t size, int copy, std::string* keep,
                   const std::string& label) {
  Sha256 hash;
  std::vector<char> chunk(std::size_t(1) << 20);
  for (std::uint64_t done = 0; done < size;) {
    const std::size_t n = std::size_t(std::min<std::uint64_t>(chunk.size(), size - done));
    ReadExactly(fd, done, chunk.data(), n, label);
    hash.Update(chunk.data(), n);
    if (keep != nullptr) keep->append(chunk.data(), n);
    for (std::size_t at = 0; copy >= 0 && at < n;) {
      const ssize_t w = ::write(copy, chunk.data() + at, n - at);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        throw Refusal("cannot copy " + label + " to memory: " + std::strerror(errno) +
                      "; free some memory and try again");
      }
      at += std::size_t(w);
    }
    done += n;
  }
  return hash.HexDigest();
}

// A private, sealed in-memory file for model.so: nobody can change it once written, and
// the loader maps it by /proc/self/fd/N.
Fd PrivateCopy() {
  Fd fd(::memfd_create("model.so", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) {
    throw Refusal(std::string("cannot create a private copy of model.so (memfd_create: ") +
                  std::strerror(errno) + "); mscnn-run needs Linux 3.17 or newer");
  }
  return fd;
}

void Seal(int fd) {
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    throw Refusal(std::string("cannot seal the private copy of model.so: ") +
                  std::strerror(errno));
  }
}

[[noreturn]] void RefuseUnopened(const InsideFile& file, const ListedFile& f,
                                 const std::string& dir) {
  switch (file.status) {
    case InsideFile::Status::kMissing:
      throw Refusal("bundle file " + f.path + " is missing from " + dir +
                    "; the bundle is incomplete: copy it again or " + kRebuild);
    case InsideFile::Status::kSymlink:
      throw Refusal("bundle file " + f.path + ": " + file.where + " is a symbolic link; a " +
                    "bundle holds its own files (a link could point outside it): copy the "
                    "bundle again without links or " + kRebuild);
    case InsideFile::Status::kNotRegular:
      throw Refusal("bundle file " + f.path + ": " + file.where + " is not a regular file "
                    "(a folder, device or pipe); copy the bundle again or " + kRebuild);
    default:
      throw Refusal("cannot read bundle file " + f.path + ": " + std::strerror(file.error));
  }
}

}  // namespace

Bundle Bundle::Open(const std::string& dir_arg, const std::optional<PublicKey>& trusted) {
  std::string dir = dir_arg;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  Bundle bundle;
  bundle.dir_ = dir;
  bundle.dir_fd_ = Fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!bundle.dir_fd_.valid()) {
    if (errno == ENOENT) {
      throw Refusal("bundle folder " + dir + " does not exist; pass the folder that holds "
                    "manifest.json (for example build/x86_64/cpsc2019-1lead)");
    }
    if (errno == ENOTDIR) {
      throw Refusal(dir + " is not a folder; pass the bundle folder that holds manifest.json");
    }
    throw Refusal("cannot open bundle folder " + dir + ": " + std::strerror(errno));
  }
  bundle.manifest_text_ = ReadManifestText(bundle.dir_fd_.get(), dir);
  if (trusted) {  // before the manifest is parsed and any file hashed: its bytes are signed
    VerifyManifest(bundle.dir_fd_.get(), dir, bundle.manifest_text_, *trusted);
    bundle.signer_ = trusted->fingerprint;
  }
  bundle.manifest_ = ParseManifest(bundle.manifest_text_, dir + "/manifest.json");
  return bundle;
}

std::string Bundle::SignatureLine() const {
  if (!signer_.empty()) return "signed by ed25519 key " + signer_ + ", verified: the trusted key";
  return DescribeSignature(dir_fd_.get(), manifest_text_);
}

void Bundle::VerifyFiles() {
  std::set<std::string> golden;
  for (const GoldenPair& pair : manifest_.golden) golden.insert({pair.input, pair.output});
  for (const ListedFile& f : manifest_.files) {
    InsideFile file = OpenInside(dir_fd_.get(), f.path);
    if (file.status != InsideFile::Status::kOk) RefuseUnopened(file, f, dir_);
    if (file.size != f.bytes) {
      throw Refusal("bundle file " + f.path + " has " + std::to_string(file.size) +
                    " bytes, the manifest lists " + std::to_string(f.bytes) +
                    " (size mismatch: truncated or replaced); copy the bundle again or " +
                    kRebuild);
    }
    const std::string label = "bundle file " + f.path;
    std::string digest;
    if (f.path == "model.so") {
      Fd copy = PrivateCopy();
      digest = HashFd(file.fd.get(), file.size, copy.get(), nullptr, label);
      Seal(copy.get());
      library_ = std::move(copy);
      library_size_ = file.size;
    } else if (golden.count(f.path) != 0) {
      std::string bytes;
      bytes.reserve(std::size_t(file.size));
      digest = HashFd(file.fd.get(), file.size, -1, &bytes, label);
      verified_[f.path] = std::move(bytes);
    } else {
      digest = HashFd(file.fd.get(), file.size, -1, nullptr, label);
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
    throw Refusal("bundle " + Clip(m.name) + " is built for " + m.arch + " (target " +
                  Clip(m.target_name) +
                  ") but this mscnn-run is built for " + runner_arch + "; run it with the " +
                  m.arch + " build of mscnn-run (make -C deploy/native ARCH=" + m.arch + ") on " +
                  where);
  }
}

void Bundle::CheckLibrary(const std::string& runner_arch) const {
  // The manifest may lie about its target; the library's own ELF header cannot, and a
  // foreign or truncated one would only fail obscurely (or fatally) inside dlopen.
  if (!library_.valid()) throw Refusal("model.so was not verified before loading");
  CheckElfLibrary(library_.get(), library_size_, runner_arch, "model.so in " + dir_);
}

std::string Bundle::LibraryPath() const {
  if (!library_.valid()) throw Refusal("model.so was not verified before loading");
  return "/proc/self/fd/" + std::to_string(library_.get());
}

const std::string& Bundle::Verified(const std::string& relative) const {
  auto it = verified_.find(relative);
  if (it == verified_.end()) throw Refusal("golden file " + relative + " was not verified");
  return it->second;
}

std::string DescribeShapeMismatch(const Manifest& m, const std::vector<std::int64_t>& got) {
  const std::vector<std::int64_t>& want = m.input.shape;
  std::string leads;
  for (std::size_t i = 0; i < m.leads.size(); ++i) leads += (i ? ", " : "") + m.leads[i];
  std::string text = "expected (batch, leads, samples) = " + ShapeText(want) + " [leads " +
                     Clip(leads) + "], got " + ShapeText(got);
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
