// manifest.json through tvm-ffi's JSON parser (tvm::ffi::json::Parse, exported by the
// libtvm_ffi.so the runner links for the VM anyway, on every architecture), plus what
// that parser leaves to its caller: a cap on nesting (it recurses once per level), a
// refusal of duplicate keys (its objects keep only one of them) and of text that is
// not UTF-8. The result is copied into the plain tree below, so the rest of the runner
// reads the manifest without tvm-ffi's templates.
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
  bool integer = false;  // a number written as an integer that fits in int64
  std::int64_t int_value = 0;
  double number = 0.0;
  std::string text;  // the string value
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;  // in document order

  const Json* Find(const std::string& key) const;
  static const char* KindName(Kind kind);
};

// Parses a whole document; JsonError names the first problem with its line and column.
// Linear in the size of `text`.
Json ParseJson(const std::string& text);

}  // namespace mscnn

#endif  // MSCNN_RUN_JSON_H_
