#include "raw.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "refusal.h"
#include "text.h"

namespace mscnn {
namespace {

// What the first bytes of a stream say it is.
enum class Start { kUndecided, kSamples, kNpy, kZip, kText };

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr char kZipMagic[] = "PK\x03\x04";  // a zip archive's first entry: .npz
// Text: a first line of at most kLineLimit printable ASCII characters and a newline, at
// least kHeaderLine characters long or followed by more text up to kTextProbe bytes.
// Real ECG as float32 makes neither: no sample start of the shared CPSC2019 and CinC 2021
// records (4.7 million, 1 to 12 leads interleaved) does, while "a printable first line"
// alone fires at 0.8% of them (a step of 0.01 mV is 0x3c23d70a: its low byte a newline).
constexpr std::size_t kLineLimit = 256, kHeaderLine = 24, kTextProbe = 32;

bool PrintableByte(unsigned char c) { return (c >= 0x20 && c < 0x7f) || c == '\t' || c == '\r'; }

// 1 if `bytes` start with the `size` bytes of `magic`, 0 if not, -1 if they are a proper
// prefix of it and more may come.
int StartsWith(const std::vector<char>& bytes, const char* magic, std::size_t size, bool ended) {
  const std::size_t n = std::min(bytes.size(), size);
  if (n > 0 && std::memcmp(bytes.data(), magic, n) != 0) return 0;
  if (n == size) return 1;
  return ended ? 0 : -1;
}

Start Classify(const std::vector<char>& bytes, bool ended) {
  const int npy = StartsWith(bytes, kNpyMagic, sizeof kNpyMagic - 1, ended);
  const int zip = StartsWith(bytes, kZipMagic, sizeof kZipMagic - 1, ended);
  if (npy == 1) return Start::kNpy;
  if (zip == 1) return Start::kZip;
  if (npy < 0 || zip < 0) return Start::kUndecided;
  std::size_t line = 0;
  for (; line < bytes.size() && bytes[line] != '\n'; ++line) {
    if (line == kLineLimit || !PrintableByte(static_cast<unsigned char>(bytes[line]))) {
      return Start::kSamples;
    }
  }
  if (line == bytes.size()) return ended ? Start::kSamples : Start::kUndecided;
  if (line >= kHeaderLine) return Start::kText;
  const std::size_t probe = std::min(bytes.size(), kTextProbe);
  for (std::size_t i = line + 1; i < probe; ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c != '\n' && !PrintableByte(c)) return Start::kSamples;
  }
  return probe == kTextProbe || ended ? Start::kText : Start::kUndecided;
}

// How to write a record held by NumPy as this stream, for a bundle of `leads` leads.
std::string Conversion(const std::string& load, std::int64_t leads) {
  return "python -c \"import numpy as np; " + load + (leads > 1 ? ".T" : "") +
         ".astype('<f4').tofile('rec.f32')\"" +
         (leads > 1 ? " (for a (leads, samples) array)" : "");
}

std::string Number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

}  // namespace

RawSource::RawSource(const std::string& path, std::int64_t leads, std::int64_t hop)
    : label_(path == "-" ? std::string("stdin") : "input " + Printable(path)), leads_(leads) {
  if (path == "-") {
    fd_ = STDIN_FILENO;
  } else {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      throw Refusal("cannot open " + label_ + " (" + std::strerror(errno) +
                    "); give raw float32 samples as --input FILE, or - for stdin");
    }
    owned_ = true;
    struct stat st;
    if (::fstat(fd_, &st) != 0 || S_ISDIR(st.st_mode)) {
      ::close(fd_);
      throw Refusal(label_ + " is a folder; give a file of raw float32 samples, or - for stdin");
    }
  }
  buffer_.resize(std::size_t(hop * leads * 4));
}

RawSource::~RawSource() {
  if (owned_) ::close(fd_);
}

void RawSource::Read() {
  for (;;) {
    const ssize_t n = ::read(fd_, buffer_.data(), buffer_.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Refusal("cannot read " + label_ + ": " + std::strerror(errno));
    rest_.insert(rest_.end(), buffer_.data(), buffer_.data() + n);
    ended_ = n == 0;
    return;
  }
}

void RawSource::CheckStart() {
  if (started_) return;
  Start start;
  while ((start = Classify(rest_, ended_)) == Start::kUndecided) Read();
  started_ = true;
  if (start == Start::kSamples) return;
  const std::string raw = "--stream reads raw little-endian float32 samples in mV" +
                          std::string(leads_ > 1 ? ", leads interleaved" : "");
  if (start == Start::kNpy) {
    throw Refusal(label_ + " starts with a .npy header (\\x93NUMPY), not raw samples: " + raw +
                  "; convert it with " + Conversion("np.load('rec.npy')", leads_) +
                  ", or use python -m deploy stream BUNDLE --input rec.npy");
  }
  if (start == Start::kZip) {
    throw Refusal(label_ + " starts with a zip archive (PK\\x03\\x04), such as an .npz, not raw "
                  "samples: " + raw + "; take the record out of it with " +
                  Conversion("np.load('rec.npz')['ecg']", leads_) +
                  " (ecg: the array's name in the archive)");
  }
  std::string line(rest_.begin(), std::find(rest_.begin(), rest_.end(), '\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  throw Refusal(label_ + " starts with a line of text (\"" + Clip(line, 60) + "\"), such as a "
                "CSV file or a WFDB header (.hea), not raw samples: " + raw + "; load the "
                "record in Python and write it with .astype('<f4').tofile('rec.f32'), or save "
                "it with np.save and use python -m deploy stream BUNDLE --input rec.npy");
}

const std::vector<float>& RawSource::Next() {
  CheckStart();
  const std::size_t frame = std::size_t(leads_) * 4;
  samples_.clear();
  while (rest_.size() < frame && !ended_) Read();
  const std::size_t whole = rest_.size() / frame * frame;
  samples_.resize(whole / 4);
  if (whole > 0) std::memcpy(samples_.data(), rest_.data(), whole);  // little-endian targets only
  rest_.erase(rest_.begin(), rest_.begin() + std::ptrdiff_t(whole));
  for (std::size_t i = 0; i < samples_.size(); ++i) {
    const float v = samples_[i];
    if (std::isnan(v) || (std::isfinite(v) && std::fabs(v) <= kMaxAbsMillivolts)) continue;
    const std::string where = label_ + ": sample " +
                              std::to_string(seen_ + std::int64_t(i / std::size_t(leads_))) +
                              " (lead " + std::to_string(i % std::size_t(leads_)) + ") is ";
    if (!std::isfinite(v)) {
      throw Refusal(where + Number(v) + "; Inf is no ECG sample (NaN marks a gap): clean the "
                    "record, or write NaN where the sensor gave nothing");
    }
    throw Refusal(where + Number(v) + ", not an ECG in mV (|x| > " + Number(kMaxAbsMillivolts) +
                  "): --stream reads raw little-endian float32 samples in mV; check the "
                  "input's format, byte order and scale");
  }
  seen_ += std::int64_t(samples_.size()) / leads_;
  return samples_;
}

}  // namespace mscnn
