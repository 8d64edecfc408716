// mscnn-run: runs a compiled mscnn-edge bundle on a device with no Python.
//
//   mscnn-run BUNDLE --check [--device cpu|cuda]
//   mscnn-run BUNDLE --input x.npy --output y.npy [--device cpu|cuda]
//   mscnn-run BUNDLE --input x.npy --detect [--json] [--fs HZ]
//   mscnn-run BUNDLE --stream [--input FILE|-] [--detect [--json]] [--fs HZ]
//   mscnn-run BUNDLE --info
//   mscnn-run --tolerances
//
// Exit codes: 0 done (and every golden input matched), 1 a golden output did not match,
// 2 refused: the bundle, the input, the arguments or the runtime failed, with one
// `error:` line on stderr.

#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "check.h"
#include "info.h"
#include "options.h"
#include "refusal.h"
#include "streaming.h"
#include "text.h"
#include "window.h"

namespace mscnn {
namespace {

// Each mode ParseArgs gives, and the command that does it.
struct Command {
  const char* mode;
  int (*run)(const Options& o);
};
constexpr Command kCommands[] = {
    {"help", Help},   {"version", Version}, {"tolerances", Tolerances}, {"info", Info},
    {"check", Check}, {"detect", Detect},   {"stream", Stream},         {"run", RunOne}};

int Main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  for (const Command& command : kCommands) {
    if (o.mode == command.mode) return command.run(o);
  }
  throw Refusal("no command for --" + o.mode + "; run mscnn-run --help");
}

}  // namespace
}  // namespace mscnn

int main(int argc, char** argv) {
  try {
    return mscnn::Main(argc, argv);
  } catch (const mscnn::Refusal& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());  // already escaped
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: out of memory; the input is too large for this device\n");
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: unexpected failure: %s\n", mscnn::Printable(e.what()).c_str());
  } catch (...) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: unexpected failure of an unknown kind\n");
  }
  return 2;
}
