// mscnn-run: manifest.json as typed values, checked once: types, ranges, enums, paths.
#ifndef MSCNN_RUN_MANIFEST_H_
#define MSCNN_RUN_MANIFEST_H_

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
  std::string input;  // relative to the bundle folder
  std::string output;
};

struct ListedFile {
  std::string path;  // relative to the bundle folder
  std::string sha256;
  std::uint64_t bytes = 0;
};

// The keys mscnn-run uses; any other key (newer optional fields) is ignored.
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

// Parses and checks the text of a manifest (schema_version 2; a version-1 bundle is
// refused: rebuild it): every key mscnn-run uses
// is present with its type, integers are integers in range, shapes are positive with a
// product that fits, enums are known values, listed paths are plain relative paths. A
// Refusal names `where` and the dotted key at fault.
Manifest ParseManifest(const std::string& text, const std::string& where);

}  // namespace mscnn

#endif  // MSCNN_RUN_MANIFEST_H_
