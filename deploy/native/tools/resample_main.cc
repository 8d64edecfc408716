// mscnn-resample: the runner's streaming resampler (src/resample.cc) alone, for tests and
// for resampling a raw record by hand:
//
//   mscnn-resample FS_IN FS_OUT LEADS [CHUNK,CHUNK,...] < in.f32 > out.f32
//
// Raw little-endian float32 in (leads interleaved), the same out. The input is pushed in
// chunks of the given sizes, cycled (default: all of it at once), then flushed; the output
// does not depend on them. Exit 2 with one `error:` line for a bad argument.

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "../src/refusal.h"
#include "../src/resample.h"

namespace {

std::vector<std::size_t> Chunks(const std::string& text) {
  std::vector<std::size_t> sizes;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    sizes.push_back(std::size_t(mscnn::ParseRate(text.substr(at, comma - at), "chunk")));
    at = comma + 1;
  }
  return sizes;
}

int Main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    throw mscnn::Refusal("usage: mscnn-resample FS_IN FS_OUT LEADS [CHUNK,...] < in > out");
  }
  const mscnn::RatePair pair = mscnn::MakeRatePair(mscnn::ParseRate(argv[1], "FS_IN"),
                                                   mscnn::ParseRate(argv[2], "FS_OUT"));
  const std::int64_t leads = mscnn::ParseRate(argv[3], "LEADS");
  std::vector<float> in;
  float block[4096];
  for (std::size_t n; (n = std::fread(block, sizeof(float), 4096, stdin)) > 0;) {
    in.insert(in.end(), block, block + n);
  }
  const std::size_t samples = in.size() / std::size_t(leads);
  const std::vector<std::size_t> sizes =
      argc == 5 ? Chunks(argv[4]) : std::vector<std::size_t>{samples ? samples : 1};
  mscnn::Resampler r(pair, leads);
  std::vector<float> out;
  for (std::size_t at = 0, i = 0; at < samples; ++i) {
    const std::size_t n = std::min(sizes[i % sizes.size()], samples - at);
    r.Push(in.data() + at * std::size_t(leads), n, &out);
    at += n;
  }
  r.Flush(&out);
  std::fwrite(out.data(), sizeof(float), out.size(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 2;
}
