#include "json.h"

#include <cerrno>
#include <cstdlib>

namespace mscnn {
namespace {

// Manifests nest three or four levels; the cap only keeps hostile input off the stack.
constexpr int kMaxDepth = 64;

class Parser {
 public:
  explicit Parser(const std::string& text) : text_(text) {}

  Json Document() {
    SkipSpace();
    Json value = Value(0);
    SkipSpace();
    if (pos_ != text_.size()) Fail("unexpected text after the document");
    return value;
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw JsonError(what + " at line " + std::to_string(line) + ", column " +
                    std::to_string(column));
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[pos_]; }

  void SkipSpace() {
    while (!AtEnd() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                        text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  void Expect(char c) {
    if (Peek() != c) Fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  void Literal(const char* word) {
    for (const char* p = word; *p != '\0'; ++p, ++pos_) {
      if (Peek() != *p) Fail(std::string("invalid literal, expected '") + word + "'");
    }
  }

  Json Value(int depth) {
    if (depth > kMaxDepth) Fail("nesting too deep");
    Json out;
    switch (Peek()) {
      case '{':
        out.kind = Json::Kind::kObject;
        ObjectBody(&out, depth);
        break;
      case '[':
        out.kind = Json::Kind::kArray;
        ArrayBody(&out, depth);
        break;
      case '"':
        out.kind = Json::Kind::kString;
        out.text = String();
        break;
      case 't':
        Literal("true");
        out.kind = Json::Kind::kBool;
        out.boolean = true;
        break;
      case 'f':
        Literal("false");
        out.kind = Json::Kind::kBool;
        break;
      case 'n':
        Literal("null");
        break;
      case '\0':
        if (AtEnd()) Fail("unexpected end of document");
        Fail("unexpected character");
      default:
        Number(&out);
    }
    return out;
  }

  void ObjectBody(Json* out, int depth) {
    Expect('{');
    SkipSpace();
    if (Peek() == '}') {
      ++pos_;
      return;
    }
    for (;;) {
      SkipSpace();
      if (Peek() != '"') Fail("expected a string key");
      std::string key = String();
      for (const auto& member : out->members) {
        if (member.first == key) Fail("duplicate key \"" + key + "\"");
      }
      SkipSpace();
      Expect(':');
      SkipSpace();
      out->members.emplace_back(std::move(key), Value(depth + 1));
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      Expect('}');
      return;
    }
  }

  void ArrayBody(Json* out, int depth) {
    Expect('[');
    SkipSpace();
    if (Peek() == ']') {
      ++pos_;
      return;
    }
    for (;;) {
      SkipSpace();
      out->items.push_back(Value(depth + 1));
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      Expect(']');
      return;
    }
  }

  unsigned Hex4() {
    unsigned value = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      char c = Peek();
      value <<= 4;
      if (c >= '0' && c <= '9') {
        value |= unsigned(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        value |= unsigned(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        value |= unsigned(c - 'A' + 10);
      } else {
        Fail("invalid \\u escape");
      }
    }
    return value;
  }

  static void AppendUtf8(unsigned cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(char(cp));
    } else if (cp < 0x800) {
      out->push_back(char(0xc0 | (cp >> 6)));
      out->push_back(char(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      out->push_back(char(0xe0 | (cp >> 12)));
      out->push_back(char(0x80 | ((cp >> 6) & 0x3f)));
      out->push_back(char(0x80 | (cp & 0x3f)));
    } else {
      out->push_back(char(0xf0 | (cp >> 18)));
      out->push_back(char(0x80 | ((cp >> 12) & 0x3f)));
      out->push_back(char(0x80 | ((cp >> 6) & 0x3f)));
      out->push_back(char(0x80 | (cp & 0x3f)));
    }
  }

  std::string String() {
    Expect('"');
    std::string out;
    for (;;) {
      if (AtEnd()) Fail("unterminated string");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) {
        --pos_;
        Fail("control character in string");
      }
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (AtEnd()) Fail("unterminated string");
      char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out.push_back(e);
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          unsigned cp = Hex4();
          if (cp >= 0xd800 && cp < 0xdc00) {
            // Python's json.dumps escapes non-BMP characters as surrogate pairs.
            if (Peek() != '\\') Fail("lone surrogate in \\u escape");
            ++pos_;
            if (Peek() != 'u') Fail("lone surrogate in \\u escape");
            ++pos_;
            unsigned low = Hex4();
            if (low < 0xdc00 || low >= 0xe000) Fail("invalid surrogate pair");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          } else if (cp >= 0xdc00 && cp < 0xe000) {
            Fail("lone surrogate in \\u escape");
          }
          AppendUtf8(cp, &out);
          break;
        }
        default:
          --pos_;
          Fail("invalid escape");
      }
    }
  }

  void Number(Json* out) {
    std::size_t start = pos_;
    auto digits = [&]() {
      std::size_t from = pos_;
      while (Peek() >= '0' && Peek() <= '9') ++pos_;
      return pos_ - from;
    };
    if (Peek() == '-') ++pos_;
    if (Peek() == '0') {
      ++pos_;
    } else if (digits() == 0) {
      pos_ = start;
      Fail("unexpected character");
    }
    if (Peek() == '.') {
      ++pos_;
      if (digits() == 0) Fail("digits expected after '.'");
    }
    if (Peek() == 'e' || Peek() == 'E') {
      ++pos_;
      if (Peek() == '+' || Peek() == '-') ++pos_;
      if (digits() == 0) Fail("digits expected in exponent");
    }
    out->kind = Json::Kind::kNumber;
    out->text = text_.substr(start, pos_ - start);
    out->number = std::strtod(out->text.c_str(), nullptr);
  }

  const std::string& text_;
  std::size_t pos_ = 0;
};

}  // namespace

const Json* Json::Find(const std::string& key) const {
  for (const auto& member : members) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

bool Json::AsInteger(std::int64_t* out) const {
  if (kind != Kind::kNumber || text.find_first_of(".eE") != std::string::npos) return false;
  errno = 0;
  char* end = nullptr;
  long long value = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = value;
  return true;
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

Json ParseJson(const std::string& text) { return Parser(text).Document(); }

}  // namespace mscnn
