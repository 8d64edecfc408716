#include "npy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "io.h"
#include "refusal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mscnn-run reads and writes '<f4' data in place and needs a little-endian target"
#endif

namespace mscnn {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;
// numpy writes headers of a few hundred bytes and refuses to read more than 10,000.
constexpr std::size_t kMaxHeader = 1 << 16;
// Far beyond any ECG record or model output; keeps every size in a 32-bit size_t.
constexpr std::uint64_t kMaxDataBytes = std::uint64_t(1) << 31;

// The header is a Python dict literal; this reads just the forms numpy.save writes:
// quoted strings, True/False and tuples of non-negative integers.
class HeaderReader {
 public:
  HeaderReader(const std::string& text, const std::string& label) : text_(text), label_(label) {}

  void Read(std::string* descr, bool* fortran, std::vector<std::int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    Skip();
    Expect('{');
    for (;;) {
      Skip();
      if (Peek() == '}') break;
      std::string key = Quoted();
      Skip();
      Expect(':');
      Skip();
      if (key == "descr") {
        *descr = Quoted();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran = Boolean();
        have_fortran = true;
      } else if (key == "shape") {
        *shape = Tuple();
        have_shape = true;
      } else {
        Bad("unknown header key '" + key + "'");
      }
      Skip();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      Skip();
      if (Peek() != '}') Bad("expected ',' or '}'");
    }
    if (!have_descr || !have_fortran || !have_shape) {
      Bad("the header lacks one of 'descr', 'fortran_order', 'shape'");
    }
  }

 private:
  [[noreturn]] void Bad(const std::string& what) const {
    throw Refusal(label_ + " has a malformed .npy header (" + what +
                  "); write it with numpy.save");
  }
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void Skip() {
    while (Peek() == ' ' || Peek() == '\n' || Peek() == '\t' || Peek() == '\r') ++pos_;
  }
  void Expect(char c) {
    if (Peek() != c) Bad(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string Quoted() {
    char quote = Peek();
    if (quote != '\'' && quote != '"') Bad("expected a quoted string");
    ++pos_;
    std::size_t end = text_.find(quote, pos_);
    if (end == std::string::npos) Bad("unterminated string");
    std::string out = text_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return out;
  }
  bool Boolean() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    Bad("fortran_order is neither True nor False");
  }
  std::vector<std::int64_t> Tuple() {
    std::vector<std::int64_t> dims;
    Expect('(');
    for (;;) {
      Skip();
      if (Peek() == ')') {
        ++pos_;
        return dims;
      }
      if (Peek() < '0' || Peek() > '9') Bad("shape is not a tuple of non-negative integers");
      std::int64_t value = 0;
      while (Peek() >= '0' && Peek() <= '9') {
        if (value > (std::numeric_limits<std::int64_t>::max() - 9) / 10) Bad("shape too large");
        value = value * 10 + (Peek() - '0');
        ++pos_;
      }
      // numpy writes Python ints; old writers append an 'L' to them.
      if (Peek() == 'L') ++pos_;
      dims.push_back(value);
      Skip();
      if (Peek() == ',') {
        ++pos_;
      } else if (Peek() != ')') {
        Bad("expected ',' or ')' in shape");
      }
    }
  }

  const std::string& text_;
  const std::string& label_;
  std::size_t pos_ = 0;
};

std::string DescribeDescr(const std::string& descr) {
  if (descr.size() < 2) return "'" + descr + "'";
  const char order = descr[0];
  const std::string body = descr.substr(1);
  std::string kind;
  if (body == "f2") kind = "float16";
  if (body == "f4") kind = "float32";
  if (body == "f8") kind = "float64";
  if (body == "i1") kind = "int8";
  if (body == "i2") kind = "int16";
  if (body == "i4") kind = "int32";
  if (body == "i8") kind = "int64";
  if (body == "u1") kind = "uint8";
  if (body == "u2") kind = "uint16";
  if (body == "u4") kind = "uint32";
  if (body == "u8") kind = "uint64";
  if (body == "b1") kind = "bool";
  if (kind.empty()) return "'" + descr + "'";
  if (order == '>') kind = "big-endian " + kind;
  return "'" + descr + "' (" + kind + ")";
}

}  // namespace

std::string ShapeText(const std::vector<std::int64_t>& shape) {
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

namespace {

// Where the data starts and how many floats it holds, read from the first `head_size`
// bytes of a file of `file_size` bytes; every size is checked before anything is read
// or allocated, so a header that lies costs nothing.
struct Layout {
  std::vector<std::int64_t> shape;
  std::size_t data_at = 0;
  std::size_t count = 0;
};

Layout ReadLayout(const char* head, std::size_t head_size, std::uint64_t file_size,
                  const std::string& label) {
  if (file_size == 0) throw Refusal(label + " is an empty file; expected a .npy array");
  const auto byte = [head](std::size_t i) {
    return std::size_t(static_cast<unsigned char>(head[i]));
  };
  if (head_size < kMagicSize + 4 || std::memcmp(head, kMagic, kMagicSize) != 0) {
    throw Refusal(label + " is not a .npy file (no NumPy magic); save the array with numpy.save");
  }
  const unsigned major = unsigned(byte(6));
  std::size_t header_len, header_at;
  if (major == 1) {
    header_len = byte(8) | byte(9) << 8;
    header_at = 10;
  } else if (major == 2 || major == 3) {
    if (head_size < 12) throw Refusal(label + " is a truncated .npy file (header cut short)");
    header_len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
    header_at = 12;
  } else {
    throw Refusal(label + " is .npy format version " + std::to_string(major) +
                  ", which mscnn-run does not read; save it with numpy.save");
  }
  if (header_len > kMaxHeader) {
    throw Refusal(label + " has a .npy header of " + std::to_string(header_len) +
                  " bytes, more than the " + std::to_string(kMaxHeader) +
                  " any .npy writer uses; save the array with numpy.save");
  }
  if (head_size < header_at + header_len) {
    throw Refusal(label + " is a truncated .npy file (header cut short)");
  }
  const std::string header(head + header_at, header_len);
  std::string descr;
  bool fortran = false;
  Layout out;
  HeaderReader(header, label).Read(&descr, &fortran, &out.shape);
  if (descr != "<f4") {
    throw Refusal(label + " holds dtype " + DescribeDescr(descr) +
                  "; mscnn-run takes little-endian float32 ('<f4'): convert with "
                  "x.astype('<f4')");
  }
  if (fortran) {
    throw Refusal(label + " is stored in Fortran order; save a C-ordered array "
                  "(numpy.ascontiguousarray(x))");
  }
  std::uint64_t count = 1;
  for (std::int64_t dim : out.shape) {
    if (dim != 0 && count > kMaxDataBytes / 4 / std::uint64_t(dim)) {
      throw Refusal(label + " declares an impossibly large shape " + ShapeText(out.shape) +
                    " (over " + std::to_string(kMaxDataBytes >> 20) + " MiB of data)");
    }
    count *= std::uint64_t(dim);
  }
  if (count == 0) throw Refusal(label + " is empty: shape " + ShapeText(out.shape));
  out.data_at = header_at + header_len;
  const std::uint64_t have = file_size - out.data_at;
  if (have != count * 4) {
    throw Refusal(label + (have < count * 4 ? " is truncated" : " has trailing bytes") +
                  ": shape " + ShapeText(out.shape) + " needs " + std::to_string(count * 4) +
                  " bytes of float32 data, the file holds " + std::to_string(have));
  }
  out.count = std::size_t(count);
  return out;
}

}  // namespace

Array ParseNpy(const std::string& bytes, const std::string& label) {
  Layout layout = ReadLayout(bytes.data(), bytes.size(), bytes.size(), label);
  Array out;
  out.shape = std::move(layout.shape);
  out.data.resize(layout.count);
  std::memcpy(out.data.data(), bytes.data() + layout.data_at, layout.count * 4);
  return out;
}

Array ReadNpy(const std::string& path, const std::string& label) {
  std::uint64_t size = 0;
  Fd fd = OpenRegular(path, label, &size);
  std::string head(std::size_t(std::min<std::uint64_t>(size, 12 + kMaxHeader)), '\0');
  ReadExactly(fd.get(), 0, &head[0], head.size(), label);
  Layout layout = ReadLayout(head.data(), head.size(), size, label);
  Array out;
  out.shape = std::move(layout.shape);
  out.data.resize(layout.count);
  ReadExactly(fd.get(), layout.data_at, out.data.data(), layout.count * 4, label);
  return out;
}

std::string NpyHeader(const std::vector<std::int64_t>& shape) {
  std::string dict =
      "{'descr': '<f4', 'fortran_order': False, 'shape': " + ShapeText(shape) + ", }";
  // numpy pads so the data starts on a 64-byte boundary and ends the header with '\n'.
  std::size_t total = 10 + dict.size() + 1;
  std::size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  std::string out(kMagic, kMagicSize);
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(char(dict.size() & 0xff));
  out.push_back(char((dict.size() >> 8) & 0xff));
  return out + dict;
}

std::int64_t FirstNonFinite(const std::vector<float>& data, std::int64_t* count) {
  std::int64_t first = -1;
  *count = 0;
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (!std::isfinite(data[i])) {
      if (first < 0) first = std::int64_t(i);
      ++*count;
    }
  }
  return first;
}

}  // namespace mscnn
