// A compiled bundle on disk: its manifest, read and checked, and the files it lists.
#ifndef MSCNN_RUN_BUNDLE_H_
#define MSCNN_RUN_BUNDLE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace mscnn {

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string dtype;
};

struct GoldenPair {
  std::string name;
  std::string input;   // relative to the bundle folder
  std::string output;
};

struct ListedFile {
  std::string path;  // relative to the bundle folder
  std::string sha256;
  std::uint64_t bytes = 0;
};

struct Manifest {
  std::string name;
  std::string target_name;
  std::string arch;    // "x86_64", "aarch64" or "armv7"
  std::string device;  // "cpu" or "cuda"
  std::vector<std::string> leads;
  double fs = 0.0;
  TensorSpec input;
  TensorSpec output;
  std::vector<GoldenPair> golden;
  std::vector<ListedFile> files;
};

class Bundle {
 public:
  // Reads and checks manifest.json; a Refusal says what is missing or malformed.
  static Bundle Open(const std::string& dir);

  // Every listed file exists with its recorded size and SHA-256; a Refusal names the
  // first that does not. Must pass before model.so is loaded: loading runs its code.
  void VerifyFiles() const;

  // A Refusal unless this runner's architecture can load the bundle's library.
  void RequireArch(const std::string& runner_arch) const;

  // A Refusal unless model.so's ELF header names the runner's machine; call after
  // VerifyFiles so the file is known to exist.
  void CheckLibraryMachine(const std::string& runner_arch) const;

  std::string PathOf(const std::string& relative) const { return dir_ + "/" + relative; }
  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }

 private:
  std::string dir_;
  Manifest manifest_;
};

// Explains an input shape that is not the bundle's, in terms of batch, leads and samples.
std::string DescribeShapeMismatch(const Manifest& manifest, const std::vector<std::int64_t>& got);

}  // namespace mscnn

#endif  // MSCNN_RUN_BUNDLE_H_
