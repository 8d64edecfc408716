#include "json.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <string_view>
#include <unordered_set>
#include <vector>

#include "text.h"

namespace mscnn {
namespace ffi = tvm::ffi;

namespace {

// Manifests nest four levels; the cap keeps hostile input off the parser's stack.
constexpr std::size_t kMaxDepth = 64;

[[noreturn]] void Fail(const std::string& text, std::size_t pos, const std::string& what) {
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < pos && i < text.size(); ++i) {
    column = text[i] == '\n' ? 1 : column + 1;
    line += text[i] == '\n';
  }
  throw JsonError(what + ": line " + std::to_string(line) + " column " + std::to_string(column));
}

// Passes over the bytes before the parser sees them: UTF-8, nesting depth, and the keys
// of each open object as written (a hash set per object, so linear overall). Only the
// structure outside strings matters here; syntax errors are left to the parser. Returns
// the number of object members written, to compare with what the parser kept.
std::size_t ScanStructure(const std::string& text) {
  struct Open {
    bool object;
    std::unordered_set<std::string_view> keys;
  };
  std::vector<Open> stack;
  std::size_t members = 0;
  bool expect_key = false;
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  for (std::size_t i = 0; i < text.size(); ++i) {
    unsigned cp;
    const std::size_t length = Utf8Length(bytes + i, text.size() - i, &cp);
    if (length == 0) Fail(text, i, "a byte that is not UTF-8");
    i += length - 1;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      const std::size_t start = i + 1;
      for (++i; i < text.size() && text[i] != '"'; ++i) i += text[i] == '\\';
      if (i >= text.size()) return members;  // unterminated: the parser says where
      if (expect_key && !stack.empty() && stack.back().object) {
        const std::string_view key(text.data() + start, i - start);
        if (!stack.back().keys.insert(key).second) {
          Fail(text, start - 1, "duplicate key \"" + Clip(std::string(key)) + "\"");
        }
        ++members;
      }
      expect_key = false;
    } else if (c == '{' || c == '[') {
      if (stack.size() >= kMaxDepth) Fail(text, i, "nesting deeper than 64 levels");
      stack.push_back(Open{c == '{', {}});
      expect_key = c == '{';
    } else if (c == '}' || c == ']') {
      if (!stack.empty()) stack.pop_back();
      expect_key = false;
    } else if (c == ',') {
      expect_key = !stack.empty() && stack.back().object;
    }
  }
  return members;
}

// The parsed value as a plain tree, counting object members on the way (depth is
// already capped by the scan). as<T>() after the type_index switch, rather than
// cast<T>(), keeps tvm-ffi's conversion-error code out of the runner: 10 KiB less.
Json Convert(const ffi::Any& value, std::size_t* members) {
  Json out;
  switch (value.type_index()) {
    case ffi::TypeIndex::kTVMFFIBool:
      out.kind = Json::Kind::kBool;
      out.boolean = *value.as<bool>();
      break;
    case ffi::TypeIndex::kTVMFFIInt:
      out.kind = Json::Kind::kNumber;
      out.integer = true;
      out.int_value = *value.as<std::int64_t>();
      out.number = double(out.int_value);
      break;
    case ffi::TypeIndex::kTVMFFIFloat:
      out.kind = Json::Kind::kNumber;
      out.number = *value.as<double>();
      break;
    case ffi::TypeIndex::kTVMFFISmallStr:
    case ffi::TypeIndex::kTVMFFIStr:
      out.kind = Json::Kind::kString;
      out.text = std::string(*value.as<ffi::String>());
      break;
    case ffi::TypeIndex::kTVMFFIArray: {
      out.kind = Json::Kind::kArray;
      // A named copy: `*value.as<T>()` straight in the range-for would dangle (the
      // optional it dereferences dies before the loop runs).
      const ffi::Array<ffi::Any> array = *value.as<ffi::Array<ffi::Any>>();
      for (const ffi::Any& item : array) {
        out.items.push_back(Convert(item, members));
      }
      break;
    }
    case ffi::TypeIndex::kTVMFFIMap: {
      out.kind = Json::Kind::kObject;
      const ffi::Map<ffi::Any, ffi::Any> map = *value.as<ffi::Map<ffi::Any, ffi::Any>>();
      for (const auto& member : map) {
        out.members.emplace_back(std::string(*member.first.as<ffi::String>()),
                                 Convert(member.second, members));
        ++*members;
      }
      break;
    }
    default:
      break;
  }
  return out;
}

}  // namespace

const Json* Json::Find(const std::string& key) const {
  for (const auto& member : members) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

const char* Json::KindName(Kind kind) {
  switch (kind) {
    case Kind::kNull:
      return "null";
    case Kind::kBool:
      return "a boolean";
    case Kind::kNumber:
      return "a number";
    case Kind::kString:
      return "a string";
    case Kind::kArray:
      return "an array";
    case Kind::kObject:
      return "an object";
  }
  return "?";
}

Json ParseJson(const std::string& text) {
  const std::size_t written = ScanStructure(text);
  ffi::String error;
  ffi::Any value;
  try {
    value = ffi::json::Parse(ffi::String(text), &error);
  } catch (const std::exception& e) {  // it reports through `error`; this is a fault
    throw JsonError(e.what());
  }
  if (!error.empty()) throw JsonError(std::string(error));
  std::size_t kept = 0;
  Json out = Convert(value, &kept);
  // The same name spelled with different escapes ("a" and "\u0061") gets past the scan.
  if (kept != written) {
    throw JsonError("duplicate key (one name written twice with different escapes)");
  }
  return out;
}

}  // namespace mscnn
