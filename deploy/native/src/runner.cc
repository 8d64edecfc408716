#include "runner.h"

#include <unistd.h>

#include <cstdint>
#include <vector>

#include "refusal.h"
#include "text.h"

namespace mscnn {
namespace {

std::string Locate(const Manifest& m, std::int64_t flat) {
  const std::int64_t leads = m.input.shape[1], samples = m.input.shape[2];
  const std::int64_t batch = flat / (leads * samples);
  const std::int64_t lead = (flat / samples) % leads;
  const std::int64_t sample = flat % samples;
  std::string where = "batch " + std::to_string(batch) + ", lead " + std::to_string(lead);
  if (lead < std::int64_t(m.leads.size())) where += " (" + Clip(m.leads[std::size_t(lead)]) + ")";
  return where + ", sample " + std::to_string(sample);
}

}  // namespace

std::string RuntimeDir() {
  std::vector<char> path(4096);
  ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) return "lib";
  std::string exe(path.data(), std::size_t(n));
  std::size_t slash = exe.rfind('/');
  return (slash == std::string::npos ? std::string(".") : exe.substr(0, slash)) + "/lib";
}

std::string Show(const std::string& text) { return Printable(text); }

std::string DeviceFor(const Bundle& bundle, const Options& o) {
  const Manifest& m = bundle.manifest();
  if (!o.device.empty() && o.device != m.device) {
    throw Refusal("bundle " + Clip(m.name) + " is built for device " + m.device + " (target " +
                  Clip(m.target_name) + "), not " + o.device + "; drop --device or pass --device " +
                  m.device);
  }
  return m.device;
}

void Admit(Bundle& bundle) {
  bundle.RequireArch(kRunnerArch);
  bundle.VerifyFiles();
  bundle.CheckLibrary(kRunnerArch);
}

void RequireFiniteInput(const Manifest& m, const Array& x, const std::string& label) {
  std::int64_t count = 0;
  std::int64_t first = FirstNonFinite(x.data, &count);
  if (first >= 0) {
    throw Refusal(label + " holds " + std::to_string(count) +
                  " NaN or Inf value(s), the first at " + Locate(m, first) +
                  "; the model needs finite samples: fill gaps (interpolate or zero) first");
  }
}

double Millis(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace mscnn
