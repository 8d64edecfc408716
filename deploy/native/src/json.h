// A small JSON reader, enough for manifest.json. Kept separate from tvm-ffi's parser so
// the manifest can be checked (and a bad bundle refused) without touching the runtime.
#ifndef MSCNN_RUN_JSON_H_
#define MSCNN_RUN_JSON_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mscnn {

class JsonError : public std::runtime_error {
 public:
  explicit JsonError(const std::string& what) : std::runtime_error(what) {}
};

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0.0;
  std::string text;  // the string value, or a number exactly as written
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;  // in document order

  const Json* Find(const std::string& key) const;
  // A number written without fraction or exponent that fits in int64.
  bool AsInteger(std::int64_t* out) const;
  static const char* KindName(Kind kind);
};

// Parses a whole document; JsonError names the line and column of the first problem.
Json ParseJson(const std::string& text);

}  // namespace mscnn

#endif  // MSCNN_RUN_JSON_H_
