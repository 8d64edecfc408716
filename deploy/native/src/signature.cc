#include "signature.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "io.h"
#include "refusal.h"
#include "sha256.h"

namespace mscnn {
namespace {

constexpr const char* kPublicTag = "mscnn-ed25519-public";
constexpr const char* kSecretTag = "mscnn-ed25519-secret";
constexpr const char* kSignatureTag = "mscnn-ed25519-signature";
constexpr const char* kSignatureFile = "manifest.sig";
constexpr std::size_t kKeyFileBytes = 20 + 1 + 64 + 1;         // either tag is 20 bytes
constexpr std::size_t kSignatureFileBytes = 23 + 1 + 64 + 1 + 128 + 1;
constexpr std::uint64_t kMaxKeyFile = 4096;
constexpr const char* kKeygen = "python -m deploy keygen KEY";

// Lower-case hex of exactly `bytes` bytes, decoded into `out`; false for anything else.
bool Unhex(const std::string& text, std::size_t bytes, std::string* out) {
  if (text.size() != 2 * bytes) return false;
  out->assign(bytes, '\0');
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else {
      return false;
    }
    (*out)[i / 2] = char((*out)[i / 2] << 4 | v);
  }
  return true;
}

// `line` without its final newline, split at single spaces.
std::vector<std::string> Fields(std::string line) {
  if (!line.empty() && line.back() == '\n') line.pop_back();
  std::vector<std::string> out(1);
  for (const char c : line) {
    if (c == ' ') {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

std::string Fingerprint(const std::string& raw) {
  Sha256 hash;
  hash.Update(raw.data(), raw.size());
  return hash.HexDigest().substr(0, 16);
}

void InitSodium() {
  if (sodium_init() < 0) throw Refusal("libsodium failed to initialise; cannot check signatures");
}

PublicKey ReadPublicKey(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd.valid()) throw Refusal("cannot read key " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw Refusal("key " + path + " is not a regular file; give a key file written by " +
                  kKeygen);
  }
  std::string text;
  if (std::uint64_t(st.st_size) <= kMaxKeyFile) {
    text.assign(std::size_t(st.st_size), '\0');
    ReadExactly(fd.get(), 0, &text[0], text.size(), "key " + path);
  }
  const std::vector<std::string> f = Fields(text);
  PublicKey key;
  const bool shaped = text.size() == kKeyFileBytes && text.back() == '\n' && f.size() == 2 &&
                      Unhex(f[1], 32, &key.raw);
  if (shaped && f[0] == kSecretTag) {
    throw Refusal("key " + path + " is a private key; trust its public half (" + path +
                  ".pub): the private key stays with whoever signs, never on a device");
  }
  if (!shaped || f[0] != kPublicTag) {
    throw Refusal("key " + path + " is not a key: expected one line '" + kPublicTag +
                  " <64 hex digits>', as `" + kKeygen + "` writes");
  }
  key.fingerprint = Fingerprint(key.raw);
  key.source = path;
  return key;
}

// The parsed manifest.sig: (signer, signature), or a Refusal saying what is wrong with it.
std::pair<std::string, std::string> ReadSignature(int dir_fd, const std::string& dir) {
  const std::string where = dir + "/" + kSignatureFile;
  InsideFile file = OpenInside(dir_fd, kSignatureFile);
  switch (file.status) {
    case InsideFile::Status::kOk:
      break;
    case InsideFile::Status::kMissing:
      throw Refusal("bundle " + dir + " is not signed (no manifest.sig) and a trusted key is "
                    "required; sign it with `python -m deploy sign` or build it with --sign KEY");
    case InsideFile::Status::kSymlink:
      throw Refusal(where + " is a symbolic link; a bundle holds its own files");
    case InsideFile::Status::kNotRegular:
      throw Refusal(where + " is not a regular file (a folder, device or pipe)");
    case InsideFile::Status::kError:
      throw Refusal("cannot read " + where + ": " + std::strerror(file.error));
  }
  if (file.size != kSignatureFileBytes) {
    throw Refusal(where + " is " + std::to_string(file.size) + " bytes; a signature file is " +
                  "exactly " + std::to_string(kSignatureFileBytes) +
                  " (truncated or padded): sign the bundle again");
  }
  std::string text(kSignatureFileBytes, '\0');
  ReadExactly(file.fd.get(), 0, &text[0], text.size(), where);
  const std::vector<std::string> f = Fields(text);
  std::pair<std::string, std::string> out;
  if (text.back() != '\n' || f.size() != 3 || f[0] != kSignatureTag ||
      !Unhex(f[1], crypto_sign_PUBLICKEYBYTES, &out.first) ||
      !Unhex(f[2], crypto_sign_BYTES, &out.second)) {
    throw Refusal(where + " is not a signature file: expected '" + kSignatureTag +
                  " <64 hex> <128 hex>' (a 32-byte key and a 64-byte Ed25519 signature): "
                  "sign the bundle again");
  }
  return out;
}

bool Verifies(const std::string& signature, const std::string& message, const std::string& key) {
  return crypto_sign_verify_detached(
             reinterpret_cast<const unsigned char*>(signature.data()),
             reinterpret_cast<const unsigned char*>(message.data()), message.size(),
             reinterpret_cast<const unsigned char*>(key.data())) == 0;
}

// The runner's own folder, where a package puts trusted.pub.
std::string ExecutableDir() {
  std::vector<char> path(4096);
  const ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) return ".";
  const std::string exe(path.data(), std::size_t(n));
  const std::size_t slash = exe.rfind('/');
  return slash == std::string::npos ? "." : exe.substr(0, slash);
}

}  // namespace

std::optional<PublicKey> TrustedKey(const Options& o) {
  std::optional<PublicKey> packaged;
  const std::string beside = ExecutableDir() + "/" + kTrustedKeyFile;
  struct stat st;
  if (::lstat(beside.c_str(), &st) == 0) packaged = ReadPublicKey(beside);
  std::optional<PublicKey> given;
  if (!o.trust.empty()) given = ReadPublicKey(o.trust);
  if (packaged && given && packaged->raw != given->raw) {
    throw Refusal("this mscnn-run trusts only the key it was packaged with (" + beside + ", " +
                  packaged->fingerprint + "), not " + o.trust + " (" + given->fingerprint +
                  "); drop --trust");
  }
  if (given) return given;
  if (packaged) return packaged;
  if (o.require_signature) {
    throw Refusal(std::string("--require-signature needs a key to check against: give --trust "
                              "KEY.pub (or ship ") + kTrustedKeyFile + " beside mscnn-run)");
  }
  return std::nullopt;
}

void VerifyManifest(int dir_fd, const std::string& dir, const std::string& manifest,
                    const PublicKey& key) {
  InitSodium();
  const auto [signer, signature] = ReadSignature(dir_fd, dir);
  if (signer != key.raw) {
    throw Refusal("bundle " + dir + " is signed by another key (" + Fingerprint(signer) +
                  "), not by the trusted key " + key.fingerprint +
                  "; it was not loaded: sign it with the trusted key");
  }
  if (!Verifies(signature, manifest, key.raw)) {
    throw Refusal("bundle " + dir + ": bad signature (manifest.sig does not match "
                  "manifest.json): it was changed after it was signed; it was not loaded: "
                  "rebuild or re-copy it");
  }
}

std::string DescribeSignature(int dir_fd, const std::string& manifest) {
  InitSodium();
  struct stat st;
  if (::fstatat(dir_fd, kSignatureFile, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) {
    return "unsigned (no manifest.sig)";
  }
  try {
    const auto [signer, signature] = ReadSignature(dir_fd, ".");
    const std::string by = "signed by ed25519 key " + Fingerprint(signer);
    return Verifies(signature, manifest, signer)
               ? by + ", valid (give --trust KEY.pub to require that key)"
               : by + ", but the signature does NOT verify (manifest changed after signing)";
  } catch (const Refusal& e) {
    return std::string("unreadable: ") + e.what();
  }
}

}  // namespace mscnn
