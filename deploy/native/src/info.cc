#include "info.h"

#include <cstdio>
#include <string>

#include "bundle.h"
#include "npy.h"
#include "runner.h"
#include "signature.h"

namespace mscnn {

int Info(const Options& o) {
  Bundle bundle = Bundle::Open(o.bundle, TrustedKey(o));
  const Manifest& m = bundle.manifest();
  std::string leads;
  for (std::size_t i = 0; i < m.leads.size(); ++i) leads += (i ? ", " : "") + m.leads[i];
  std::string golden;
  for (std::size_t i = 0; i < m.golden.size(); ++i) golden += (i ? ", " : "") + m.golden[i].name;
  std::printf("name: %s\n", Show(m.name).c_str());
  std::printf("target: %s (arch %s, device %s)\n", Show(m.target_name).c_str(), m.arch.c_str(),
              m.device.c_str());
  std::printf("precision: %s\n", m.precision.c_str());
  std::printf("leads: %zu [%s]\n", m.leads.size(), Show(leads).c_str());
  std::printf("fs: %g Hz\n", m.fs);
  std::printf("input: %s float32 %s (batch, leads, samples)\n", Show(m.input.name).c_str(),
              ShapeText(m.input.shape).c_str());
  std::printf("output: %s float32 %s\n", Show(m.output.name).c_str(),
              ShapeText(m.output.shape).c_str());
  if (m.has_stream) {  // the step's input is one hop; what it keeps between hops
    const StreamSpec& s = m.stream;
    std::printf("stream: hop %lld samples (%g s), look-ahead %lld samples (%g s), state %lld "
                "bytes (%.1f KiB in %zu tensors), flush %lld steps\n",
                static_cast<long long>(s.hop), double(s.hop) / m.fs,
                static_cast<long long>(s.look_ahead), double(s.look_ahead) / m.fs,
                static_cast<long long>(s.state_bytes), double(s.state_bytes) / 1024,
                s.states.size(), static_cast<long long>(s.flush_steps));
  } else if (!m.stream_error.empty()) {
    std::printf("stream: not readable by this mscnn-run: %s\n", m.stream_error.c_str());
  }
  std::printf("golden: %s\n", golden.empty() ? "(none)" : Show(golden).c_str());
  std::printf("signature: %s\n", bundle.SignatureLine().c_str());
  std::printf("runner: %s, %s\n", kRunnerArch,
              m.arch == kRunnerArch ? "can run this bundle"
                                    : ("needs the " + m.arch + " build of mscnn-run").c_str());
  return 0;
}

}  // namespace mscnn
