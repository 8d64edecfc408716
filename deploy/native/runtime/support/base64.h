// Base64 streams: how tensors are embedded in TVM's JSON serialization (armv7 build).
// Standard alphabet with '=' padding, no line breaks.
#ifndef MSCNN_NATIVE_TVM_SUPPORT_BASE64_H_
#define MSCNN_NATIVE_TVM_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
inline int Decode(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  std::size_t Write(const void* ptr, std::size_t size) final {
    const auto* bytes = static_cast<const std::uint8_t*>(ptr);
    for (std::size_t i = 0; i < size; ++i) {
      pending_[count_++] = bytes[i];
      if (count_ == 3) Emit(3);
    }
    return size;
  }
  std::size_t Read(void*, std::size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
  }
  // Writes the last, padded group; call once after the final Write.
  void Finish() {
    if (count_ > 0) Emit(count_);
  }

 private:
  void Emit(int n) {
    const char* abc = base64::Alphabet();
    std::uint32_t group = std::uint32_t(pending_[0]) << 16;
    if (n > 1) group |= std::uint32_t(pending_[1]) << 8;
    if (n > 2) group |= pending_[2];
    char text[4] = {abc[(group >> 18) & 63], abc[(group >> 12) & 63],
                    n > 1 ? abc[(group >> 6) & 63] : '=', n > 2 ? abc[group & 63] : '='};
    out_->Write(text, 4);
    count_ = 0;
  }

  Stream* out_;
  std::uint8_t pending_[3] = {0, 0, 0};
  int count_ = 0;
};

class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  // Skips leading whitespace, as JSON text may carry some before the payload.
  void InitPosition() {
    char c;
    while (in_->Read(&c, 1) == 1) {
      if (c != ' ' && c != '\n' && c != '\r' && c != '\t') {
        lookahead_ = c;
        have_lookahead_ = true;
        return;
      }
    }
  }

  std::size_t Read(void* ptr, std::size_t size) final {
    auto* out = static_cast<std::uint8_t*>(ptr);
    std::size_t done = 0;
    while (done < size) {
      if (avail_ == used_ && !Refill()) break;
      out[done++] = decoded_[used_++];
    }
    return done;
  }
  std::size_t Write(const void*, std::size_t) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
  }

 private:
  bool NextChar(char* c) {
    if (have_lookahead_) {
      have_lookahead_ = false;
      *c = lookahead_;
      return true;
    }
    return in_->Read(c, 1) == 1;
  }

  bool Refill() {
    if (finished_) return false;
    char text[4];
    for (int i = 0; i < 4; ++i) {
      if (!NextChar(&text[i])) {
        TVM_FFI_ICHECK(i == 0) << "truncated base64 data";
        finished_ = true;
        return false;
      }
    }
    int v[4];
    for (int i = 0; i < 4; ++i) v[i] = text[i] == '=' ? 0 : base64::Decode(text[i]);
    for (int i = 0; i < 4; ++i) TVM_FFI_ICHECK(v[i] >= 0) << "invalid base64 character";
    std::uint32_t group = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) |
                          (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
    decoded_[0] = std::uint8_t(group >> 16);
    decoded_[1] = std::uint8_t(group >> 8);
    decoded_[2] = std::uint8_t(group);
    avail_ = text[2] == '=' ? 1 : (text[3] == '=' ? 2 : 3);
    used_ = 0;
    if (avail_ < 3) finished_ = true;
    return true;
  }

  Stream* in_;
  char lookahead_ = 0;
  bool have_lookahead_ = false;
  std::uint8_t decoded_[3] = {0, 0, 0};
  int avail_ = 0;
  int used_ = 0;
  bool finished_ = false;
};

}  // namespace support
}  // namespace tvm

#endif  // MSCNN_NATIVE_TVM_SUPPORT_BASE64_H_
