// mscnn-run's command line: what to do, with which bundle, input, output and device.
#ifndef MSCNN_RUN_OPTIONS_H_
#define MSCNN_RUN_OPTIONS_H_

#include <cstdint>
#include <string>

namespace mscnn {

struct Options {
  std::string bundle;
  std::string mode;  // "check", "run", "detect", "stream", "info", "tolerances", "version", "help"
  std::string input;
  std::string output;
  std::string device;
  std::int64_t fs = 0;  // --fs: the record's rate in Hz (0: the bundle's is assumed)
  std::int64_t cases = 0;  // --cases N: --check runs the first N golden cases (0: all)
  bool detect = false;
  bool json = false;
  std::string trust;               // --trust KEY.pub: run only bundles that key signed
  bool require_signature = false;  // --require-signature: refuse to run without a key
};

// The command line, checked as a whole: one mode, the values it needs, and no option
// that does not go with it; anything else is a Refusal that says what to run instead.
Options ParseArgs(int argc, char** argv);

// --help (the usage text, on stdout) and --version.
int Help(const Options& o);
int Version(const Options& o);

}  // namespace mscnn

#endif  // MSCNN_RUN_OPTIONS_H_
