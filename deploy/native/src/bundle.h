// A compiled bundle on disk: its manifest, read and checked, and the files it lists,
// verified and held as the very bytes that were hashed.
#ifndef MSCNN_RUN_BUNDLE_H_
#define MSCNN_RUN_BUNDLE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io.h"
#include "manifest.h"
#include "signature.h"

namespace mscnn {

class Bundle {
 public:
  // Reads and checks manifest.json (a regular file of at most 1 MiB, not a symlink); a
  // Refusal says what is missing or malformed. With a trusted key, manifest.sig must be
  // that key's signature of the bytes read, checked before they are parsed.
  static Bundle Open(const std::string& dir,
                     const std::optional<PublicKey>& trusted = std::nullopt);

  // Every listed file is reached inside the folder without a symlink, is a regular file
  // of its recorded size, and has its recorded SHA-256, computed from the descriptor
  // whose bytes are then used: model.so is copied while hashed into a sealed private
  // file that the loader maps later, golden files are kept in memory. So nothing can
  // change between the check and the use. A Refusal names the first file that fails.
  // Must pass before model.so is loaded: loading runs its code.
  void VerifyFiles();

  // A Refusal unless this runner's architecture can load the bundle's library.
  void RequireArch(const std::string& runner_arch) const;

  // After VerifyFiles: a Refusal unless the verified model.so is an ELF library for the
  // runner's machine whose segments all lie inside the file.
  void CheckLibrary(const std::string& runner_arch) const;

  // After VerifyFiles: where the loader opens the verified copy of model.so.
  std::string LibraryPath() const;

  // After VerifyFiles: the verified bytes of a golden file.
  const std::string& Verified(const std::string& relative) const;

  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  // --info: whether and by whom the bundle is signed (the trusted key's, if checked).
  std::string SignatureLine() const;

 private:
  std::string dir_;
  Fd dir_fd_;
  Manifest manifest_;
  std::string manifest_text_;  // the bytes parsed (and, with a trusted key, verified)
  std::string signer_;         // the trusted key's fingerprint, when its signature matched
  Fd library_;  // sealed memfd copy of model.so
  std::uint64_t library_size_ = 0;
  std::map<std::string, std::string> verified_;
};

// Explains an input shape that is not the bundle's, in terms of batch, leads and samples.
std::string DescribeShapeMismatch(const Manifest& manifest, const std::vector<std::int64_t>& got);

}  // namespace mscnn

#endif  // MSCNN_RUN_BUNDLE_H_
